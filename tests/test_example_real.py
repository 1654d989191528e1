"""``rpa-bus demo --real``: real robots on the local site, or how to install what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpa_bus import Settings
from rpa_bus.cli._real import MISSING, OK, RealDemoOptions, run_real_demo
from tests.test_example_robot import (
    check_failed_session,
    check_finished_session,
    chromium,
    stream_events,
)

__all__ = ["chromium"]  # a fixture, imported for pytest


def test_without_chromium_it_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RPA_BUS_CHROMIUM", str(tmp_path / "no-chromium-here"))
    out: list[str] = []
    code = run_real_demo(settings=Settings(spool_dir=tmp_path), echo=out.append)
    text = "\n".join(out)
    assert code == MISSING
    assert f"RPA_BUS_CHROMIUM={tmp_path / 'no-chromium-here'} is not a file" in text
    assert "apt-get install -y chromium chromium-driver" in text
    assert "pip install playwright" in text


def test_robots_fill_quotes_and_one_in_two_fails(
    chromium: str, redis_url: str, spool_dir: Path, tmp_path: Path
) -> None:
    out: list[str] = []
    options = RealDemoOptions(
        robots=2,
        count=2,
        fail_every=2,
        estimate_delay_s=0.0,
        latency_s=0.0,
        screenshots=tmp_path / "shots",
        session_prefix="real",
    )
    settings = Settings(redis_url=redis_url, spool_dir=spool_dir)
    assert run_real_demo(settings=settings, options=options, echo=out.append) == OK
    assert out[0].startswith("demo --real: 2 Chromium robots")
    assert out[-1] == "demo --real: 1 finished, 1 failed"
    lines = {line.split()[2]: line for line in out[1:-1]}  # session id -> its line
    assert len(lines) == 2
    ok, bad = sorted(lines, key=lambda sid: sid.endswith("-2"))
    assert ok.endswith("-1")
    assert "finished: premium" in lines[ok]
    assert "failed: screen 9: the site failed with HTTP 500" in lines[bad]
    done = stream_events(redis_url, ok)
    check_finished_session(done, shots_dir=tmp_path / "shots")
    # The site served the screenshots: the bus carries their URLs.
    assert all("url" in e["artifact"] for e in done if e["type"] == "artifact")
    check_failed_session(stream_events(redis_url, bad), "FAIL000")
