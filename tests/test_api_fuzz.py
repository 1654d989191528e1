"""Fuzz every HTTP API operation against its own OpenAPI description (schemathesis): no
5xx, every status, content type, header and body as described. Valid and invalid input
both; a bounded number of examples per operation.

The API runs in a real relay (its aiohttp server, middleware and all) in a thread of its
own (schemathesis calls it with a blocking HTTP client) against a private Redis.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay import Relay, RelaySettings
from relay._api import ApiLimits
from relay._openapi import openapi_spec
from rpa_bus import now_ts
from rpa_bus.archive import Record, open_store
from tests._relay_support import relay_settings
from tests.conftest import UNIT_S

# The description the relay serves (its default limits).
schema = schemathesis.openapi.from_dict(openapi_spec(ApiLimits()))
# The SSE stream never ends; the doors' own tests cover it.
schema = schema.exclude(path="/v1/sse")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class Served:
    """A relay with ``settings`` on its own event loop in a thread, until ``stop()``."""

    def __init__(self, settings: RelaySettings) -> None:
        self._settings = settings
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.base = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="api-fuzz-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10 * UNIT_S) or not self.base:
            raise RuntimeError(f"relay did not start: {self._error!r}")

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with Relay(self._settings) as relay:
                self.base = f"http://127.0.0.1:{relay.port}"
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15 * UNIT_S)
        assert not self._thread.is_alive(), "relay thread did not stop"


@pytest.fixture
def base_url(redis_url: str) -> Iterator[str]:
    served = Served(relay_settings(redis_url))
    try:
        assert served.base is not None
        yield served.base
    finally:
        served.stop()


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_operation_matches_its_spec(case: schemathesis.Case, base_url: str) -> None:
    """Valid and invalid input (schemathesis generates both): invalid input is refused
    with a described 4xx, valid input gets a described answer; never a 5xx."""
    case.call_and_validate(
        base_url=base_url, checks=[*CHECKS, negative_data_rejection], timeout=10 * UNIT_S
    )


@pytest.fixture
def archived_base_url(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A relay with a SQLite archive holding finished and failed runs of a job."""
    url = f"sqlite://{tmp_path / 'archive.db'}"
    asyncio.run(_archive_runs(url))
    base = relay_settings(redis_url)
    served = Served(base.with_(bus=base.bus.with_(archive_url=url)))
    try:
        assert served.base is not None
        yield served.base
    finally:
        served.stop()


async def _archive_runs(url: str) -> None:
    store = await open_store(url)
    try:
        for i, outcome in enumerate(("finished", "finished", "failed")):
            ms = 1_700_000_000_000 + i * 100_000
            rows = [
                ("started", ms, {"job": "quote-robot", "total": 2}),
                ("step", ms + 1, {"step": 1, "phase": "start", "attempt": 1, "message": "s1"}),
                (
                    "step",
                    ms + 900,
                    {"step": 1, "phase": "end", "attempt": 1, "outcome": "ok", "duration_s": 0.9},
                ),
                (outcome, ms + 1000, {}),
            ]
            await store.put(
                [
                    Record(
                        f"session:q{i}",
                        "e",
                        f"{at}-0",
                        orjson.dumps({"type": kind, "ts": now_ts(at / 1000), **fields}),
                    )
                    for kind, at, fields in rows
                ]
            )
    finally:
        await store.close()


@schema.include(path_regex="^/v1/jobs").parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_job_operations_with_an_archive_match_their_spec(
    case: schemathesis.Case, archived_base_url: str
) -> None:
    """The job summaries answer from a real archive as described (the relay above has
    none, so there they only answer 404)."""
    case.call_and_validate(
        base_url=archived_base_url,
        checks=[*CHECKS, negative_data_rejection],
        timeout=10 * UNIT_S,
    )
