"""The job view in the producer, against a real Redis: a session's job, steps with
attempts, outcomes and durations, log levels, artifact references, the learned ETA read
from ``P:job:JOB:profile``, and every bad input refused at once."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from producer import AsyncProducer, Producer
from rpa_bus import InvalidEvent, InvalidEventType, Keys, StepProfile, decode
from rpa_bus.cli._embedded import EmbeddedRedis
from tests._producer_helpers import client, events, meta
from tests._wait import wait_for, wait_for_async
from tests.conftest import UNIT_S


@pytest.fixture
def bus(redis_url: str, spool_dir: Path) -> Any:
    p = Producer(redis_url, spool_dir=spool_dir)
    yield p
    p.close(timeout_s=2 * UNIT_S)


def steps_of(got: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (e["step"], e["phase"], e["attempt"], e.get("outcome")) for e in got if e["type"] == "step"
    ]


def test_steps_with_retry_and_failure(bus: Producer, redis_url: str) -> None:
    def robot() -> None:
        with bus.session("q-steps", job="quote-robot", total=3) as s:
            with s.step(1, "Screen 1: login"):
                s.log("typing the password", level="debug")
            with s.step(2, "Screen 2: vehicle") as st:
                st.retry("the page timed out")
            with s.step(2, "Screen 2: vehicle"):
                s.artifact("screenshot", "http://site.test/s2.png", name="s2", mime="image/png")
            with s.step(3, "Screen 3: quote"):
                raise RuntimeError("no quote")

    with pytest.raises(RuntimeError, match="no quote"):
        robot()
    assert bus.flush(5 * UNIT_S)
    r = client(redis_url)
    got = events(r, "q-steps")
    for e in got:
        decode(orjson.dumps(e))
    assert got[0]["type"] == "started"
    assert got[0]["job"] == "quote-robot"
    assert steps_of(got) == [
        (1, "start", 1, None),
        (1, "end", 1, "ok"),
        (2, "start", 1, None),
        (2, "end", 1, "retried"),
        (2, "start", 2, None),
        (2, "end", 2, "ok"),
        (3, "start", 1, None),
        (3, "end", 1, "failed"),
    ]
    by = [e for e in got if e["type"] == "step"]
    assert by[0]["message"] == "Screen 1: login"
    assert by[0]["percent"] == 0.0
    assert by[1]["percent"] == 33.3
    assert by[3]["message"] == "the page timed out"
    assert by[3]["percent"] == 33.3
    assert by[7]["message"] == "RuntimeError: no quote"
    assert all(e["duration_s"] >= 0 for e in by if e["phase"] == "end")
    assert all("duration_s" not in e for e in by if e["phase"] == "start")
    log = next(e for e in got if e["type"] == "log")
    assert (log["level"], log["step"]) == ("debug", 1)
    art = next(e for e in got if e["type"] == "artifact")
    assert art["step"] == 2
    assert art["artifact"] == {
        "kind": "screenshot",
        "url": "http://site.test/s2.png",
        "name": "s2",
        "mime": "image/png",
    }
    assert got[-1]["type"] == "failed"
    m = meta(r, "q-steps")
    assert (m["status"], m["job"], m["step"]) == ("failed", "quote-robot", "3")


def test_pace_eta_has_basis_zero_with_a_job(bus: Producer, redis_url: str) -> None:
    with bus.session("q-pace", job="new-job", total=4) as s:
        with s.step(1, "one"):
            time.sleep(0.02)
        s.progress(2, "two")
    assert bus.flush(5 * UNIT_S)
    got = events(client(redis_url), "q-pace")
    end1 = next(e for e in got if e["type"] == "step" and e["phase"] == "end")
    assert end1["eta_runs"] == 0
    assert end1["eta_s"] > 0
    prog = next(e for e in got if e["type"] == "progress")
    assert prog["eta_runs"] == 0
    m = meta(client(redis_url), "q-pace")
    assert m["eta_runs"] == "0"
    # Without a job: no basis field, as before.
    with bus.session("q-nojob", total=2) as s:
        s.progress(1)
    assert bus.flush(5 * UNIT_S)
    assert "eta_runs" not in events(client(redis_url), "q-nojob")[1]


def test_learned_eta_from_the_job_profile(bus: Producer, redis_url: str) -> None:
    # Seven noisy runs: step 1 is quick, the rest long; the pace after a quick first step
    # would promise the end in a moment.
    noise = [(1.0, 1.1, 0.9), (1.2, 0.8, 1.0), (0.9, 1.0, 1.1), (1.1, 0.9, 1.2),
             (1.0, 1.2, 0.8), (0.8, 1.1, 1.0), (1.0, 1.0, 1.0)]  # fmt: skip
    profile = StepProfile.learn([{1: 0.05 * a, 2: 10.0 * b, 3: 100.0 * c} for a, b, c in noise])
    r = client(redis_url)
    r.set(Keys().job_profile("slow-steps"), orjson.dumps(profile.as_json()))
    with bus.session("q-learned", job="slow-steps", total=3) as s:
        wait_for(lambda: bus.profile("slow-steps"), what="the job's profile read")
        with s.step(1, "one"):
            time.sleep(0.05)
        s.progress(2)
    assert bus.flush(5 * UNIT_S)
    got = events(r, "q-learned")
    start1, end1 = [e for e in got if e["type"] == "step"]
    assert start1["eta_runs"] == 7
    # The rest of step 1 and steps 2 and 3: about 111 s, whatever the pace says.
    assert 100 < start1["eta_s"] < 112
    assert end1["eta_runs"] == 7
    assert 30 < end1["eta_s"] < 400  # learned: the pace would say about 0.1 s
    prog = next(e for e in got if e["type"] == "progress")
    assert prog["eta_runs"] == 7
    assert 1 < prog["eta_s"] < 400  # step 2 "done" at once: faster, still learned
    m = meta(r, "q-learned")
    assert m["eta_runs"] == "7"


def test_a_broken_profile_is_ignored(bus: Producer, redis_url: str) -> None:
    r = client(redis_url)
    r.set(Keys().job_profile("broken"), b"{not json")
    r.set(Keys().job_profile("wrong"), orjson.dumps({"v": 1, "runs": -1}))
    for job in ("broken", "wrong"):
        with bus.session(f"q-{job}", job=job, total=2) as s:
            s.progress(1)
    assert bus.flush(5 * UNIT_S)
    assert bus.profile("broken") is None
    assert bus.profile("wrong") is None
    assert events(r, "q-broken")[1]["eta_runs"] == 0


def test_artifact_path_and_explicit_step(bus: Producer, redis_url: str) -> None:
    with bus.session("q-art", total=5) as s:
        s.artifact("report.pdf", Path("/tmp/out/report.pdf"), step=4)
        s.artifact("screenshot", "https://cdn.test/a.png")
        s.log("plain")
    assert bus.flush(5 * UNIT_S)
    got = events(client(redis_url), "q-art")
    assert got[1]["artifact"] == {"kind": "report.pdf", "path": "/tmp/out/report.pdf"}
    assert got[1]["step"] == 4
    assert got[2]["artifact"] == {"kind": "screenshot", "url": "https://cdn.test/a.png"}
    assert "step" not in got[2]
    assert "level" not in got[3]  # info, by the contract


def test_bad_input_raises_at_once(bus: Producer, redis_url: str) -> None:
    with pytest.raises(InvalidEvent, match="job"):
        bus.session("q-bad", job="no spaces")
    with pytest.raises(InvalidEvent, match="job"):
        bus.session("q-bad", job="")
    with bus.session("q-bad", total=3) as s:
        with pytest.raises(InvalidEvent, match="level"):
            s.log("x", level="loud")
        with pytest.raises(InvalidEvent, match="step must be"):
            s.step(-1)
        with pytest.raises(InvalidEvent, match="beyond total"):
            s.step(4)
        with pytest.raises(InvalidEvent, match="step name"):
            s.step(1, 42)  # type: ignore[arg-type]
        with pytest.raises(InvalidEvent, match="artifact kind"):
            s.artifact("Screen Shot", "http://x.test/a.png")
        with pytest.raises(InvalidEvent, match="1 to 2048"):
            s.artifact("screenshot", "")
        with pytest.raises(InvalidEvent, match="URL or a path"):
            s.artifact("screenshot", 42)  # type: ignore[arg-type]
        with pytest.raises(InvalidEventType, match="step"):
            s.emit("step", {})
        st = s.step(1, "one")
        with pytest.raises(InvalidEvent, match="not open"):
            st.retry()
        with st:
            with pytest.raises(InvalidEvent, match="still open"):
                s.step(2)
            with pytest.raises(InvalidEvent, match="still open"):
                s.finish()
        with pytest.raises(InvalidEvent, match="already entered"), st:
            pass
    assert bus.flush(5 * UNIT_S)
    got = events(client(redis_url), "q-bad")
    # Nothing refused was written: started, one step's start and end, finished.
    assert [e["type"] for e in got] == ["started", "step", "step", "finished"]


def test_fail_inside_a_step_ends_the_step_failed(bus: Producer, redis_url: str) -> None:
    with bus.session("q-fail", total=2) as s, s.step(1, "one"):
        s.fail("the site is down")
    assert bus.flush(5 * UNIT_S)
    got = events(client(redis_url), "q-fail")
    assert [(e["type"], e.get("outcome")) for e in got] == [
        ("started", None),
        ("step", None),
        ("step", "failed"),
        ("failed", None),
    ]
    assert got[2]["message"] == "the site is down"


async def test_async_steps(redis_url: str, spool_dir: Path) -> None:
    r = client(redis_url)
    r.set(Keys().job_profile("aj"), orjson.dumps(StepProfile.learn([{1: 5.0, 2: 5.0}]).as_json()))
    async with AsyncProducer(redis_url, spool_dir=spool_dir) as bus:
        async with bus.session("aq-steps", job="aj", total=2) as s:
            await wait_for_async(lambda: bus.profile("aj"), what="the profile read")
            async with s.step(1, "one") as st:
                st.retry("again")
            async with s.step(1, "one"):
                s.log("careful", level="warning")
            with s.step(2, "two"):
                s.artifact("screenshot", "/tmp/s.png")
        assert await bus.flush(5 * UNIT_S)
    got = events(r, "aq-steps")
    assert got[0]["job"] == "aj"
    assert steps_of(got) == [
        (1, "start", 1, None),
        (1, "end", 1, "retried"),
        (1, "start", 2, None),
        (1, "end", 2, "ok"),
        (2, "start", 1, None),
        (2, "end", 1, "ok"),
    ]
    assert [e["eta_runs"] for e in got if e["type"] == "step" and "eta_s" in e] == [1] * 5
    assert next(e for e in got if e["type"] == "log")["level"] == "warning"
    assert next(e for e in got if e["type"] == "artifact")["artifact"]["path"] == "/tmp/s.png"


def test_redis_down_the_job_goes_on_at_its_pace(tmp_path: Path) -> None:
    """A job's profile cannot be read (nothing listens): nothing waits for it, the ETA is
    the pace, and the events wait in the journal."""
    from rpa_bus.cli._embedded import free_port

    bus = Producer(
        f"redis://127.0.0.1:{free_port()}/0",
        spool_dir=tmp_path,
        connect_timeout_s=0.2,
        socket_timeout_s=0.2,
    )
    try:
        started = time.monotonic()
        with bus.session("q-down", job="some-job", total=3) as s:
            for n in (1, 2, 3):
                with s.step(n, f"step {n}"):
                    time.sleep(0.01)
        assert time.monotonic() - started < 1.0  # three 10 ms steps: nothing waited
        assert bus.profile("some-job") is None
        assert not bus.flush(0.3)
    finally:
        bus.close(timeout_s=0.5)


def test_a_failed_profile_read_is_tried_again_by_a_later_run(
    redis_server: EmbeddedRedis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="producer")
    bus = Producer(
        redis_server.url, spool_dir=tmp_path, connect_timeout_s=0.2, socket_timeout_s=0.5
    )
    bus.profile_retry_s = 0.2
    try:
        redis_server.stop()
        with bus.session("q-r1", job="flaky", total=2) as s:
            s.progress(1)
        wait_for(
            lambda: "cannot read the step profile of job flaky" in caplog.text,
            what="the failed read",
        )
        assert bus.profile("flaky") is None
        redis_server.start()
        r = client(redis_server.url)
        r.set(Keys().job_profile("flaky"), orjson.dumps(StepProfile.learn([{1: 1.0}]).as_json()))

        def runs_again() -> StepProfile | None:
            with bus.session("q-r2", job="flaky", total=2) as s:
                s.progress(1)
            return bus.profile("flaky")

        # Within the retry interval nothing is asked; after it, a new run reads it.
        wait_for(runs_again, what="a later run reading the profile", interval_s=0.1)
        assert bus.flush(5 * UNIT_S)
    finally:
        bus.close(timeout_s=2 * UNIT_S)
