"""``rpa-bus emit`` through the real console script, against the test server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from rpa_bus.cli._embedded import EmbeddedRedis, free_port
from tests._producer_helpers import client, events, index, meta

ROOT = Path(__file__).resolve().parents[1]
RPA_BUS = ROOT / ".venv" / "bin" / "rpa-bus"


def run(url: str, spool_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RPA_BUS_REDIS_URL": url, "RPA_BUS_SPOOL_DIR": str(spool_dir)}
    exe = str(RPA_BUS) if RPA_BUS.exists() else "rpa-bus"
    return subprocess.run(
        [exe, "emit", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_emit_writes_events(redis_url: str, spool_dir: Path) -> None:
    assert run(redis_url, spool_dir, "cli-1", "started", "--total", "4").returncode == 0
    done = run(
        redis_url, spool_dir, "cli-1", "progress", "--step", "1", "--total", "4",
        "--message", "Tela 1", "--data", '{"plate": "ABC1D23"}',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert run(redis_url, spool_dir, "cli-1", "finished", "--data", "[1, 2]").returncode == 0
    r = client(redis_url)
    got = events(r, "cli-1")
    assert [e["type"] for e in got] == ["started", "progress", "finished"]
    assert got[1]["percent"] == 25.0
    assert got[1]["message"] == "Tela 1"
    assert got[1]["data"] == {"plate": "ABC1D23"}
    assert got[2]["data"] == [1, 2]
    assert meta(r, "cli-1")["status"] == "finished"
    assert [e["type"] for e in index(r)] == ["started", "finished"]


def test_emit_refuses_bad_input_with_one_line(redis_url: str, spool_dir: Path) -> None:
    cases = [
        (("s", "log", "--data", "{not json"), "not valid JSON"),
        (("bad id", "log"), "invalid session id 'bad id'"),
        (("s", "Not-A-Type"), "invalid event type 'Not-A-Type'"),
        (("s", "progress", "--step", "9", "--total", "3"), "step 9 is beyond total 3"),
    ]
    for args, words in cases:
        done = run(redis_url, spool_dir, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert events(client(redis_url), "s") == []


def test_emit_redis_down_fails_clearly_and_keeps_the_event(
    redis_server: EmbeddedRedis, spool_dir: Path
) -> None:
    url = redis_server.url
    redis_server.stop()
    done = run(url, spool_dir, "cli-2", "log", "--message", "kept", "--timeout", "0.3")
    assert done.returncode == 1
    assert "not written within 0.3s" in done.stderr
    assert "journal" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert len(list(spool_dir.glob("*.journal"))) == 1
    # An emit to another Redis leaves the kept event alone (it is not for that target).
    other = f"redis://127.0.0.1:{free_port()}/0"
    assert run(other, spool_dir, "cli-2", "log", "--timeout", "0.1").returncode == 1
    assert len(list(spool_dir.glob("*.journal"))) == 2
    # The next emit to the same Redis, once it is up, delivers the kept event first.
    redis_server.start()
    assert run(url, spool_dir, "cli-2", "log", "--message", "next").returncode == 0
    got = events(client(url), "cli-2")
    assert [e["message"] for e in got] == ["kept", "next"]
    assert len(list(spool_dir.glob("*.journal"))) == 1  # the other target's, still waiting


def test_cli_producer_and_make_build_the_same_envelope(redis_url: str, spool_dir: Path) -> None:
    """One builder, one rounding: 1 of 16 is 6.3 percent from every door."""
    from producer import Producer
    from rpa_bus import make

    done = run(redis_url, spool_dir, "one", "progress", "--step", "1", "--total", "16")
    assert done.returncode == 0, done.stderr
    bus = Producer(redis_url, spool_dir=spool_dir)
    s = bus.session("two", total=16)  # not started: no pace, so no eta_s, like the CLI
    s.progress(1)
    assert bus.flush(5)
    bus.close()
    r = client(redis_url)
    (cli,) = events(r, "one")
    (lib,) = events(r, "two")
    built = make("progress", ts=cli["ts"], step=1, total=16)
    assert cli["percent"] == 6.3
    assert cli == built
    assert list(cli) == list(built)  # the same fields in the same order
    assert {**lib, "ts": cli["ts"]} == cli
    assert list(lib) == list(cli)


def test_emit_carries_the_job_view_fields(redis_url: str, spool_dir: Path) -> None:
    calls = [
        ("cli-j", "started", "--total", "3", "--job", "shell-robot"),
        ("cli-j", "step", "--step", "1", "--total", "3", "--phase", "start", "--message", "Login"),
        ("cli-j", "log", "--level", "warning", "--step", "1", "--message", "slow"),
        ("cli-j", "artifact", "--step", "1", "--artifact", "screenshot:http://h.test/1.png",
         "--name", "login", "--mime", "image/png"),
        ("cli-j", "artifact", "--artifact", "har:/tmp/run.har"),
        ("cli-j", "step", "--step", "1", "--total", "3", "--phase", "end", "--outcome", "ok",
         "--duration", "2.5"),
        ("cli-j", "step", "--step", "2", "--total", "3", "--phase", "start", "--attempt", "2"),
    ]  # fmt: skip
    for args in calls:
        done = run(redis_url, spool_dir, *args)
        assert done.returncode == 0, (args, done.stderr)
    got = events(client(redis_url), "cli-j")
    assert got[0]["job"] == "shell-robot"
    assert (got[1]["phase"], got[1]["attempt"], got[1]["percent"]) == ("start", 1, 0.0)
    assert got[2]["level"] == "warning"
    assert got[3]["artifact"] == {
        "kind": "screenshot", "url": "http://h.test/1.png", "name": "login", "mime": "image/png"
    }  # fmt: skip
    assert got[4]["artifact"] == {"kind": "har", "path": "/tmp/run.har"}
    assert (got[5]["outcome"], got[5]["duration_s"], got[5]["percent"]) == ("ok", 2.5, 33.3)
    assert got[6]["attempt"] == 2
    assert meta(client(redis_url), "cli-j")["job"] == "shell-robot"
    bad = [
        (("s2", "step", "--step", "1"), "needs 'step' (its number) and 'phase'"),
        (("s2", "step", "--step", "1", "--phase", "end"), "needs an 'outcome'"),
        (("s2", "log", "--level", "loud"), "level must be one of"),
        (("s2", "artifact", "--artifact", "nocolon"), "KIND:URL_OR_PATH"),
        (("s2", "log", "--name", "x"), "--name and --mime"),
        (("s2", "started", "--job", "a b"), "job must match"),
    ]
    for args, words in bad:
        done = run(redis_url, spool_dir, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr, done.stderr
    assert events(client(redis_url), "s2") == []
