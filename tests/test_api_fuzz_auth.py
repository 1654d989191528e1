"""Fuzz the HTTP API (schemathesis) where tests/test_api_fuzz.py does not reach: a relay
with ``RPA_BUS_SECRET`` (a valid token, a token without any claim), a relay with a SQLite
archive on every operation (the archive branches of the sessions list, one session and
history), and ``/v1/sse`` by its parameters and headers (hypothesis; status, headers and
the first bytes only, since the response never ends).

Real relays (their aiohttp server and middleware) in a thread each, a private Redis.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from relay import mint_token
from rpa_bus import now_ts
from rpa_bus.archive import Record, open_store
from tests._relay_support import relay_settings
from tests.conftest import UNIT_S
from tests.test_api_fuzz import CHECKS, Served, negative_data_rejection, schema

SECRET = "fuzz-secret-that-is-long-enough-for-hs256!"
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
                database=None)  # fmt: skip


@pytest.fixture
def secure_base(redis_url: str) -> Iterator[str]:
    base = relay_settings(redis_url)
    served = Served(base.with_(bus=base.bus.with_(secret=SECRET)))
    try:
        yield served.base
    finally:
        served.stop()


def full_token() -> str:
    return mint_token(SECRET, ["*"], publish=["*"], ttl_s=3600)


def claimless_token() -> str:
    """Signed with the secret, unexpired, but granting nothing: no streams, no publish."""
    return jwt.encode({"iat": int(time.time()), "exp": int(time.time()) + 3600}, SECRET,
                      algorithm="HS256")  # fmt: skip


OPERATIONS = schema.exclude(path="/v1/openapi.json")


@OPERATIONS.parametrize()
@FUZZ
def test_every_operation_with_a_secret_and_a_valid_token(
    case: schemathesis.Case, secure_base: str
) -> None:
    """A token granting everything, sent as the header (schemathesis may add ``?token=``
    too; the header wins): every answer as described, never a 5xx."""
    case.call_and_validate(
        base_url=secure_base,
        headers={"Authorization": f"Bearer {full_token()}"},
        checks=[*CHECKS, negative_data_rejection],
        timeout=10 * UNIT_S,
    )


@OPERATIONS.parametrize()
@FUZZ
def test_a_token_without_claims_is_refused_everywhere(
    case: schemathesis.Case, secure_base: str
) -> None:
    """A validly signed token that grants nothing: every operation answers 401 or 403 (or
    400 for input refused before auth is looked at), as described; never 2xx, never 5xx."""
    response = case.call(
        base_url=secure_base,
        headers={"Authorization": f"Bearer {claimless_token()}"},
        timeout=10 * UNIT_S,
    )
    case.validate_response(response, checks=CHECKS)
    if case.method.upper() == "OPTIONS":  # a CORS preflight carries no credentials
        assert response.status_code in (204, 403, 404, 405), response.status_code
        return
    assert response.status_code in (400, 401, 403, 404, 405, 413), (
        response.status_code,
        response.text[:300],
    )
    if response.status_code in (401, 403):
        assert response.json()["error"]["code"] == "forbidden"
    meta = case.meta
    if (
        meta is not None
        and meta.generation.mode == GenerationMode.POSITIVE
        and case.method.upper() == case.operation.method.upper()
    ):
        # Valid input for a described operation: only the token is wrong. (The history's
        # {stream} is any string in the description; a name that is no stream is refused
        # first, since what the token must grant depends on it.)
        refused_name = (
            response.status_code == 400
            and case.operation.path == "/v1/streams/{stream}/events"
            and response.json()["error"]["code"] == "invalid_stream"
        )
        assert refused_name or response.status_code in (401, 403), (
            response.status_code,
            response.text[:300],
        )
    if response.status_code == 404:
        # Only "no such route" may come before auth (a path schemathesis mangled).
        assert response.json()["error"]["code"] == "not_found"
        url = str(response.request.url)
        assert not _is_operation_path(urllib.parse.urlsplit(url).path), (
            case.method,
            url,
            response.text,
        )


def _is_operation_path(path: str) -> bool:
    parts = urllib.parse.unquote(path).split("/")
    return (
        len(parts) >= 3
        and parts[1] == "v1"
        and parts[2] in ("sessions", "streams", "jobs", "sse")
        and "" not in parts[1:]
    )


# -- a relay with a SQLite archive: every operation ---------------------------------------


@pytest.fixture
def archive_base(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A relay reading a SQLite archive that holds sessions gone from Redis (finished and
    failed, with jobs), so the archive branches answer something."""
    url = f"sqlite://{tmp_path / 'archive.db'}"
    asyncio.run(_fill(url))
    base = relay_settings(redis_url)
    served = Served(base.with_(bus=base.bus.with_(archive_url=url)))
    try:
        yield served.base
    finally:
        served.stop()


async def _fill(url: str) -> None:
    store = await open_store(url)
    try:
        for i in range(12):
            ms = 1_700_000_000_000 + i * 100_000
            outcome = ("finished", "failed", "finished")[i % 3]
            events = [
                ("started", ms, {"job": f"job-{i % 2}", "total": 3}),
                ("progress", ms + 10, {"step": 1, "total": 3, "message": f"screen {i}"}),
                (outcome, ms + 1000, {"error": "boom"} if outcome == "failed" else {}),
            ]
            await store.put(
                [
                    Record(
                        f"session:a{i}",
                        f"e{i}",
                        f"{at}-0",
                        orjson.dumps({"type": kind, "ts": now_ts(at / 1000), **fields}),
                    )
                    for kind, at, fields in events
                ]
            )
            await store.put(
                [
                    Record(
                        "sessions",
                        "ix",
                        f"{ms}-0",
                        orjson.dumps(
                            {"type": "started", "session": f"a{i}", "ts": now_ts(ms / 1000)}
                        ),
                    ),
                ]
            )
    finally:
        await store.close()


@OPERATIONS.parametrize()
@FUZZ
def test_every_operation_with_an_archive_matches_its_spec(
    case: schemathesis.Case, archive_base: str
) -> None:
    case.call_and_validate(
        base_url=archive_base,
        checks=[*CHECKS, negative_data_rejection],
        timeout=10 * UNIT_S,
    )


def test_the_archive_branches_answer_what_the_archive_holds(archive_base: str) -> None:
    """The fuzz above could pass on 404s alone: the archive answers here for real."""
    with httpx.Client(base_url=archive_base, timeout=10 * UNIT_S) as http:
        one = http.get("/v1/sessions/a1")
        assert one.status_code == 200, one.text
        assert (one.json()["status"], one.json()["job"]) == ("failed", "job-1")
        listed = http.get("/v1/sessions", params={"limit": 5})
        assert listed.status_code == 200, listed.text
        page = listed.json()
        assert len(page["sessions"]) == 5
        assert page["next"]
        rest = http.get("/v1/sessions", params={"limit": 100, "cursor": page["next"]})
        assert rest.status_code == 200, rest.text
        names = [s["session"] for s in page["sessions"] + rest.json()["sessions"]]
        assert sorted(names) == sorted(f"a{i}" for i in range(12))
        history = http.get("/v1/streams/session:a3/events")
        assert history.status_code == 200, history.text
        assert [e["data"]["type"] for e in history.json()["events"]] == [
            "started", "progress", "finished",
        ]  # fmt: skip


# -- /v1/sse: parameters and headers ------------------------------------------------------

STREAMS = st.sampled_from(["session:a", "sessions", "monitor:h", "session:", "bogus", "", "*"])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
IDS = st.one_of(st.sampled_from(["0", "$", "1-0", "99999999999999999999-1", "-1", "x"]), TEXT)


def _sse_reply(base: str, params: list[tuple[str, str]], headers: dict[str, str]) -> httpx.Response:
    """Status and headers, and the first bytes of the body (then closed)."""
    with (
        httpx.Client(base_url=base, timeout=5 * UNIT_S) as http,
        http.stream("GET", "/v1/sse", params=params, headers=headers) as response,
    ):
        head = b""
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            for chunk in response.iter_raw():
                head += chunk
                if len(head) >= 8:
                    break
        else:
            head = response.read()
        response._content = head  # what was read, for the checks below
        return response


def _check_sse(response: httpx.Response, *, secure: bool) -> None:
    status = response.status_code
    assert status in (200, 400, 401, 403), (status, response.content[:300])
    ctype = response.headers.get("content-type", "")
    if status == 200:
        assert ctype.startswith("text/event-stream"), ctype
        assert response.content.startswith(b"retry: "), response.content[:100]
    else:
        assert ctype.startswith("application/json"), ctype
        body = orjson.loads(response.content)
        assert body["error"]["code"] in (
            "bad_request", "invalid_stream", "invalid_offset", "forbidden",
            "too_many_subscriptions",
        ), body  # fmt: skip
        if status in (401, 403):
            assert secure or body["error"]["code"] == "forbidden"


def _printable(value: str) -> bool:
    return all(0x20 <= ord(c) < 0x7F for c in value)


@pytest.fixture
def plain_base(redis_url: str) -> Iterator[str]:
    served = Served(relay_settings(redis_url))
    try:
        yield served.base
    finally:
        served.stop()


@given(
    streams=st.lists(st.one_of(STREAMS, TEXT), max_size=4),
    start=st.one_of(st.none(), IDS),
    last_param=st.one_of(st.none(), TEXT, st.builds(lambda s, i: f"{s}={i}", STREAMS, IDS)),
    last_header=st.one_of(st.none(), TEXT.filter(_printable),
                          st.builds(lambda s, i: f"{s}={i}", STREAMS, IDS).filter(_printable)),
    extra=st.lists(st.tuples(st.sampled_from(["from", "last_event_id", "x"]), TEXT), max_size=2),
)  # fmt: skip
@FUZZ
def test_sse_parameters_and_headers_never_give_a_5xx(
    plain_base: str,
    streams: list[str],
    start: str | None,
    last_param: str | None,
    last_header: str | None,
    extra: list[tuple[str, str]],
) -> None:
    params = [("stream", s) for s in streams]
    if start is not None:
        params.append(("from", start))
    if last_param is not None:
        params.append(("last_event_id", last_param))
    params += extra
    headers = {} if last_header is None else {"Last-Event-ID": last_header}
    _check_sse(_sse_reply(plain_base, params, headers), secure=False)


@given(
    streams=st.lists(STREAMS, min_size=1, max_size=3),
    auth=st.sampled_from(["none", "full", "claimless", "narrow", "garbage", "scheme"]),
    where=st.sampled_from(["header", "query"]),
)
@FUZZ
def test_sse_auth_never_gives_a_5xx_and_grants_only_what_the_token_says(
    secure_base: str, streams: list[str], auth: str, where: str
) -> None:
    token = {
        "none": None,
        "full": full_token(),
        "claimless": claimless_token(),
        "narrow": mint_token(SECRET, ["session:a"], ttl_s=3600),
        "garbage": "not.a.jwt",
        "scheme": full_token(),
    }[auth]
    params: list[tuple[str, Any]] = [("stream", s) for s in streams]
    headers: dict[str, str] = {}
    if token is not None and where == "query" and auth != "scheme":
        params.append(("token", token))
    elif token is not None:
        headers["Authorization"] = f"Basic {token}" if auth == "scheme" else f"Bearer {token}"
    response = _sse_reply(secure_base, params, headers)
    _check_sse(response, secure=True)
    if auth in ("none", "claimless", "garbage", "scheme"):
        assert response.status_code in (400, 401, 403), response.status_code
    if auth == "narrow" and any(s != "session:a" for s in streams):
        assert response.status_code in (400, 403), response.status_code
    valid = {"session:a", "sessions", "monitor:h"}
    granted = auth == "full" or (auth == "narrow" and set(streams) == {"session:a"})
    if granted and set(streams) <= valid:
        assert response.status_code == 200, (response.status_code, response.content[:300])


def test_a_method_the_path_does_not_take_is_405_not_404(plain_base: str) -> None:
    """docs/http.md: 405 ``method_not_allowed`` for a method the path does not take. GET on
    the POST-only events path used to fall through to the static files' 404."""
    with httpx.Client(base_url=plain_base, timeout=10 * UNIT_S) as http:
        reply = http.get("/v1/sessions/quote-1/events")
        assert reply.status_code == 405, reply.text
        assert reply.json()["error"]["code"] == "method_not_allowed"
        assert "POST" in reply.headers["Allow"]
        reply = http.delete("/v1/sessions/quote-1")
        assert reply.status_code == 405, reply.text
        assert "GET" in reply.headers["Allow"]
        reply = http.get("/v1/nothing/here")
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "not_found"
