"""The example robot, end to end without the relay: real Chromium filling the real quote
site, reporting through the real producer into a real Redis, read back with XRANGE."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from producer import Producer
from rpa_bus.cli._real import INSTALL_HINT, chromium_path, examples_dir, load_examples
from tests._producer_helpers import client
from tests._producer_helpers import events as read_events
from tests.conftest import UNIT_S

TOTAL = 15


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium and the Playwright driver; the test fails (never skips) without."""
    path = chromium_path()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(f"Playwright is not installed.\n{INSTALL_HINT}", pytrace=False)
    if path is None:
        pytest.fail(f"Chromium is not installed.\n{INSTALL_HINT}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def examples() -> tuple[ModuleType, ModuleType]:
    """The modules ``rpa_quote`` (the robot) and ``quote_site``, loaded from examples/."""
    return load_examples()


@pytest.fixture
def site(examples: tuple[ModuleType, ModuleType]) -> Iterator[Any]:
    site = examples[1].start_site(estimate_delay_s=0.5)
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture
def bus(redis_url: str, spool_dir: Path) -> Iterator[Producer]:
    producer = Producer(redis_url, spool_dir=spool_dir)
    try:
        yield producer
    finally:
        producer.close(timeout_s=2 * UNIT_S)


def stream_events(redis_url: str, sid: str) -> list[dict[str, Any]]:
    """The session's events as stored: XRANGE of its stream, field ``e``."""
    r = client(redis_url)
    try:
        return read_events(r, sid)
    finally:
        r.close()


def steps(events: list[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "step" and e["phase"] == phase]


def check_finished_session(events: list[dict[str, Any]], shots_dir: Path | None = None) -> None:
    """started (job quote-robot), steps 1..15 each ended ok with its duration, a screenshot
    artifact per screen, logs by level, estimates within screen 5, finished."""
    types = [e["type"] for e in events]
    assert types[0] == "started"
    assert events[0]["job"] == "quote-robot"
    assert types[-1] == "finished"
    assert types.count("started") == 1
    assert types.count("finished") == 1
    starts, ends = steps(events, "start"), steps(events, "end")
    assert [e["step"] for e in starts] == list(range(1, TOTAL + 1))
    assert [(e["step"], e["outcome"], e["attempt"]) for e in ends] == [
        (n, "ok", 1) for n in range(1, TOTAL + 1)
    ]
    assert all(e["total"] == TOTAL and e["duration_s"] >= 0 for e in ends)
    assert all("eta_s" in e and "eta_runs" in e for e in ends[:-1])
    assert ends[-1]["percent"] == 100.0
    assert starts[3]["message"].startswith("Screen 4: vehicle ")
    shots = [e for e in events if e["type"] == "artifact"]
    assert [e["step"] for e in shots] == list(range(1, TOTAL + 1))
    for e in shots:
        ref = e["artifact"]  # a reference (URL or path) to a PNG, never the image itself
        assert (ref["kind"], ref["mime"]) == ("screenshot", "image/png")
        if "url" in ref and shots_dir is not None:  # the site is gone: read what it served
            sid, name = ref["url"].split("/")[-2:]
            assert ref["url"].startswith("http://127.0.0.1:")
            assert (shots_dir / sid / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        elif "url" in ref:
            with urllib.request.urlopen(ref["url"], timeout=10) as resp:
                assert resp.read(8) == b"\x89PNG\r\n\x1a\n"
        else:
            assert Path(ref["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    levels = {e.get("level", "info") for e in events if e["type"] == "log"}
    assert {"debug", "info"} <= levels
    estimates = [i for i, e in enumerate(events) if e["type"] == "estimates"]
    assert len(estimates) == 1
    # Read within screen 5's step.
    assert events.index(starts[4]) < estimates[0] < events.index(ends[4])
    plans = events[estimates[0]]["data"]["plans"]
    assert len(plans) == 4
    assert all(p["premium"] > 0 for p in plans)
    quote = events[-1]["data"]
    assert quote["quote_number"].startswith("Q")
    assert quote["premium"] > 0
    assert quote["insurer"] == plans[0]["insurer"]  # the robot picks the cheapest


def check_failed_session(events: list[dict[str, Any]], plate: str) -> None:
    """The site's own error in screen 9's step, after screens 1-8 and the estimates."""
    types = [e["type"] for e in events]
    assert types[0] == "started"
    assert types[-1] == "failed"
    assert "finished" not in types
    ends = steps(events, "end")
    assert [(e["step"], e["outcome"]) for e in ends] == [(n, "ok") for n in range(1, 9)] + [
        (9, "failed")
    ]
    assert "E-RISK-500" in ends[-1]["message"]
    assert "estimates" in types
    assert any(e["type"] == "log" and e.get("level") == "error" for e in events)
    error = events[-1]["error"]
    assert error.startswith("screen 9: the site failed with HTTP 500: ")
    assert f"Rating engine error E-RISK-500: vehicle {plate} could not be rated" in error


def test_two_robots_at_once_one_quote_finishes_one_fails(
    examples: tuple[ModuleType, ModuleType],
    chromium: str,
    site: Any,
    bus: Producer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    robot, quote_site = examples
    plate = quote_site.FAILING_PLATE
    failing = dataclasses.replace(robot.QuoteRequest.sample(2), plate=plate)
    outcomes = robot.run_robots(
        bus,
        site_url=site.url,
        jobs=[("robot-ok", robot.QuoteRequest.sample(1)), ("robot-fail", failing)],
        robots=2,
        screenshots=tmp_path / "shots",
        browser_path=chromium,
    )
    assert bus.flush(timeout_s=5 * UNIT_S)
    by_sid = {o.session: o for o in outcomes}
    assert by_sid["robot-ok"].status == "finished"
    assert by_sid["robot-fail"].status == "failed"
    assert "E-RISK-500" in by_sid["robot-fail"].error

    done = stream_events(redis_url, "robot-ok")
    check_finished_session(done)
    assert done[-1]["data"] == by_sid["robot-ok"].quote
    assert done[0]["data"]["plate"] == robot.QuoteRequest.sample(1).plate
    assert "password" not in done[0]["data"]
    check_failed_session(stream_events(redis_url, "robot-fail"), plate)
    shots = sorted(p.name for p in (tmp_path / "shots" / "robot-ok").iterdir())
    assert shots == [f"screen-{n:02d}.png" for n in range(1, TOTAL + 1)]


def test_runs_as_a_script(
    examples: tuple[ModuleType, ModuleType], chromium: str, redis_url: str, tmp_path: Path
) -> None:
    """``python examples/rpa_quote.py`` with its flags, as docs/robot.md tells users to."""
    directory = examples_dir()
    assert directory is not None
    site = examples[1].start_site(estimate_delay_s=0.0)
    env = {**os.environ, "RPA_BUS_SPOOL_DIR": str(tmp_path / "spool"), "RPA_BUS_CHROMIUM": chromium}
    args = ["--redis-url", redis_url, "--site-url", site.url, "--session-prefix", "cli"]
    try:
        proc = subprocess.run(
            [sys.executable, str(directory / "rpa_quote.py"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60 * UNIT_S,
            check=False,
        )
    finally:
        site.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("cli-")]
    sid = line.split(":", 1)[0]
    assert line.startswith(f"{sid}: finished ")
    check_finished_session(stream_events(redis_url, sid))
