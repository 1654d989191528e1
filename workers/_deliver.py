"""One signed HTTP POST to one endpoint, and what its outcome means for retrying.

Signing is the Standard Webhooks specification's own Python package
(``standardwebhooks.Webhook.sign``): ``webhook-signature: v1,BASE64(HMAC-SHA256(secret,
"{webhook-id}.{webhook-timestamp}.{body}"))``. The id is the caller's (stable across
retries); the timestamp is the attempt's own, so a retry hours later still passes a
receiver's five-minute tolerance.

The HTTP client is aiohttp, one session per endpoint (one endpoint's connections, pool
and failures never touch another's), set up for hostile receivers: no redirects, no
proxies from the environment, no cookies, connect and read timeouts plus a total bound,
and a response body read only up to a cap. Every connection goes through
``CheckingResolver`` (see ``_safety``), and an IP-literal URL is checked before the
request starts, since aiohttp does not ask a resolver about literals.
"""

from __future__ import annotations

import email.utils
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks import Webhook

from workers._endpoints import Endpoint
from workers._safety import AddressRefused, CheckingResolver, check_address, ip_literal

log = logging.getLogger(__name__)

USER_AGENT = "rpa-bus-webhooks/0.1"
DEFAULT_BODY_CAP_BYTES = 64 * 1024
# HTTP statuses worth another try: the receiver is overloaded, restarting or asks to wait.
RETRY_STATUSES = frozenset({408, 409, 425, 429})
RETRY_AFTER_MAX_S = 3600.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one POST: delivered, retry later, or give up (``final``)."""

    ok: bool
    final: bool
    status: int | None
    error: str | None
    retry_after_s: float | None
    elapsed_s: float
    response: bytes = b""


def classify(status: int) -> tuple[bool, bool]:
    """(ok, final) for an HTTP status: 2xx delivered; 408/409/425/429 and 5xx retried;
    every other status (other 4xx, 1xx, 3xx: redirects are not followed) final."""
    if 200 <= status < 300:
        return True, True
    if status in RETRY_STATUSES or 500 <= status < 600:
        return False, False
    return False, True


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped at an
    hour; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_s is None else now_s
    return min(max(0.0, when.timestamp() - now), RETRY_AFTER_MAX_S)


def sign_headers(signer: Webhook, webhook_id: str, body: bytes, *, now: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent at ``now``."""
    timestamp = now.astimezone(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signer.sign(webhook_id, timestamp, body.decode("utf-8")),
    }


def _refused(exc: BaseException) -> AddressRefused | None:
    """The AddressRefused behind an aiohttp connector error, if that is what it was."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, AddressRefused):
            return seen
        inner = getattr(seen, "os_error", None)
        seen = inner if isinstance(inner, BaseException) else (seen.__cause__ or seen.__context__)
    return None


class Deliverer:
    """Signs and POSTs bodies to one endpoint; an async context manager owning its session.

    ``connection_attempts`` counts connections aiohttp began to make (before resolving),
    ``connects`` those it established: a refused target must leave ``connects`` at 0, and
    an IP-literal one ``connection_attempts`` too (it is refused before the request).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        body_cap_bytes: int = DEFAULT_BODY_CAP_BYTES,
        connect_timeout_s: float = 5.0,
        max_connections: int = 16,
    ) -> None:
        self.endpoint = endpoint
        self.connects = 0
        self.connection_attempts = 0
        self._signer = Webhook(endpoint.secret)
        self._cap = body_cap_bytes
        self._host_literal = ip_literal(urlsplit(endpoint.url).hostname or "")
        self._timeout = aiohttp.ClientTimeout(
            total=endpoint.timeout_s,
            sock_connect=min(connect_timeout_s, endpoint.timeout_s),
            sock_read=endpoint.timeout_s,
        )
        self._connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Deliverer:
        self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_start.append(self._on_connect_start)
            trace.on_connection_create_end.append(self._on_connect_end)
            connector = aiohttp.TCPConnector(
                resolver=CheckingResolver(allow_private=self.endpoint.allow_private),
                use_dns_cache=False,  # every new connection resolves and checks again
                limit=self._connections,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # no proxies from the environment
                headers={"User-Agent": USER_AGENT},
                auto_decompress=False,
                trace_configs=[trace],
            )
        return self._session

    async def _on_connect_start(
        self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
    ) -> None:
        self.connection_attempts += 1

    async def _on_connect_end(
        self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
    ) -> None:
        self.connects += 1

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def post(self, webhook_id: str, body: bytes) -> Attempt:
        """One attempt: sign now, POST, read at most the cap of the answer."""
        started = time.monotonic()
        headers = sign_headers(self._signer, webhook_id, body, now=datetime.now(UTC))
        headers["Content-Type"] = "application/json"
        try:
            if self._host_literal is not None:
                check_address(self._host_literal, allow_private=self.endpoint.allow_private)
            session = self._open()
            async with session.post(
                self.endpoint.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                answer = await response.content.read(self._cap)
                ok, final = classify(response.status)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return Attempt(
                    ok=ok,
                    final=final,
                    status=response.status,
                    error=None if ok else f"HTTP {response.status} {response.reason or ''}".strip(),
                    retry_after_s=retry_after,
                    elapsed_s=time.monotonic() - started,
                    response=answer,
                )
        except AddressRefused as exc:
            return self._failed(started, str(exc), final=True)
        except TimeoutError:
            return self._failed(started, f"timed out after {self.endpoint.timeout_s:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            refused = _refused(exc)
            if refused is not None:
                return self._failed(started, str(refused), final=True)
            if isinstance(exc, aiohttp.InvalidURL):
                return self._failed(started, f"invalid url: {exc}", final=True)
            return self._failed(started, f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _failed(started: float, error: str, *, final: bool = False) -> Attempt:
        return Attempt(
            ok=False,
            final=final,
            status=None,
            error=error,
            retry_after_s=None,
            elapsed_s=time.monotonic() - started,
        )
