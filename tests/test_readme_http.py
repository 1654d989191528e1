"""README.md's "From any language" block, run as written: its curl lines are extracted from
the README (continuations joined, the relay's address swapped for a live `rpa-bus relay`
on a free port) and run with bash and the machine's curl; the answers must look as the
README says (the comment under the session's GET is compared field by field, the SSE
output must carry the session's events). Then the same POSTs with ``$TOKEN`` from
``rpa-bus token --publish 'session:*'`` against a relay with ``RPA_BUS_SECRET``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest

from rpa_bus.cli._embedded import free_port
from tests._service import Service, running_service
from tests.conftest import UNIT_S

README = Path(__file__).resolve().parent.parent / "README.md"
README_BASE = "http://127.0.0.1:8765"
SECRET = "readme-secret-that-is-long-enough-for-hs256!"
CURL = shutil.which("curl")


def readme_block() -> list[str]:
    """The lines of the first ```bash block under "## From any language"."""
    text = README.read_text()
    section = text.split("## From any language", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "no bash block under 'From any language' in README.md"
    return match.group(1).splitlines()


def commands_and_comments() -> list[tuple[str, list[str]]]:
    """Each command (continuation lines joined) with the comment lines that follow it."""
    out: list[tuple[str, list[str]]] = []
    pending = ""
    for line in readme_block():
        stripped = line.strip()
        if stripped.startswith("#"):
            if out and not pending:
                out[-1][1].append(stripped[1:].strip())
            continue
        if not stripped:
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            out.append((pending, []))
            pending = ""
    assert not pending, f"a command ends in a continuation: {pending!r}"
    return out


COMMANDS = commands_and_comments()


def test_the_block_holds_what_this_test_runs() -> None:
    """If the README changes shape this test must change with it, not pass vacuously."""
    kinds = [c.split()[0:3] for c, _ in COMMANDS]
    assert all(c[0] == "curl" for c in kinds), kinds
    posts = [c for c, _ in COMMANDS if "-X POST" in c]
    gets = [c for c, _ in COMMANDS if "-X POST" not in c and "/v1/sse" not in c]
    sse = [c for c, _ in COMMANDS if "/v1/sse" in c]
    assert (len(posts), len(gets), len(sse)) == (2, 1, 1), COMMANDS
    assert COMMANDS[2][1], "the session GET is followed by its example answer"


@pytest.fixture
def curl() -> str:
    if CURL is None:
        pytest.fail("curl is not on PATH: the README's examples cannot be run", pytrace=False)
    return CURL


def serve(redis_url: str, tmp_path: Path, **env: str) -> AbstractContextManager[Service]:
    port = free_port()
    return running_service(
        ["relay", "--port", str(port), "--redis-url", redis_url],
        port=port,
        folder=tmp_path,
        env=env,
    )


def run(command: str, port: int, *, token: str = "", timeout_s: float = 20.0) -> str:
    """One README line through bash, against the relay on ``port``."""
    line = command.replace(README_BASE, f"http://127.0.0.1:{port}")
    assert line != command, f"the README line names no {README_BASE}: {command}"
    done = subprocess.run(
        ["bash", "-c", line + " --silent --show-error --fail-with-body"],
        capture_output=True, text=True, timeout=timeout_s * UNIT_S,
        env={"PATH": os.environ.get("PATH", ""), "TOKEN": token},
    )  # fmt: skip
    assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def example_answer(comment: str) -> dict[str, Any]:
    """The README's ``{"session":...,"eta_s":null,...}``: the fields it shows."""
    text = comment.replace(",...}", "}").replace("...", "")
    parsed: dict[str, Any] = orjson.loads(text)
    return parsed


def test_readme_curl_lines_against_a_live_relay(curl: str, redis_url: str, tmp_path: Path) -> None:
    (start, _), (progress, _), (get, answer), (sse, _) = COMMANDS
    with serve(redis_url, tmp_path) as relay:
        first = orjson.loads(run(start, relay.port))
        assert first["stream"] == "session:quote-123"
        assert first["replayed"] is False
        assert len(first["ids"]) == 1
        second = orjson.loads(run(progress, relay.port))
        assert len(second["ids"]) == 1
        assert second["ids"][0] > first["ids"][0]
        # "a retry with the same key appends nothing twice"
        retry = orjson.loads(run(start, relay.port))
        assert retry == {**first, "replayed": True}

        state = orjson.loads(run(get, relay.port))
        shown = example_answer(answer[0])
        assert {k: state[k] for k in shown} == shown, (state, shown)
        # The PHP line's comment: "running 20% Screen 3".
        assert f"{state['status']} {state['percent']:g}% {state['message']}" == (
            "running 20% Screen 3"
        )

        events = read_sse(sse, relay.port, until=b"event: live")
        kinds = re.findall(rb"^event: (\w+)$", events, re.M)
        assert kinds[0] == b"subscribed"
        assert kinds.count(b"event") == 2, events
        assert kinds[-1] == b"live"
        datas = [orjson.loads(d) for d in re.findall(rb"^data: (.*)$", events, re.M)]
        sent = [d for d in datas if d["type"] == "event"]
        assert [d["id"] for d in sent] == first["ids"] + second["ids"]
        assert [d["data"]["type"] for d in sent] == ["started", "progress"]
        assert sent[1]["data"]["message"] == "Screen 3"
        assert re.search(rb"^id: session:quote-123=" + second["ids"][0].encode(), events, re.M)


def read_sse(command: str, port: int, *, until: bytes, timeout_s: float = 15.0) -> bytes:
    """Run the README's ``curl -N`` (which never ends) until ``until`` is in its output."""
    line = command.replace(README_BASE, f"http://127.0.0.1:{port}")
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + line + " --silent --show-error"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    out = b""
    deadline = time.monotonic() + timeout_s * UNIT_S
    try:
        while until not in out:
            chunk = proc.stdout.read(65536)
            if chunk:
                out += chunk
                continue
            assert proc.poll() is None, f"curl exited {proc.returncode}: {out!r}"
            assert time.monotonic() < deadline, f"no {until!r} in {out!r}"
            time.sleep(0.02)  # polling a pipe: a bounded loop, not a wait for an event
        return out
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_readme_posts_with_a_token_from_rpa_bus_token(
    curl: str, redis_url: str, tmp_path: Path
) -> None:
    """With ``RPA_BUS_SECRET``: ``TOKEN`` from ``rpa-bus token --publish 'session:*'`` (as the
    README says) lets the POST lines append; without it they are refused with 401."""
    minted = subprocess.run(
        [str(Path(sys.executable).parent / "rpa-bus"), "token", "--publish", "session:*"],
        capture_output=True, text=True, timeout=30 * UNIT_S,
        env={**os.environ, "RPA_BUS_SECRET": SECRET},
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.count(".") == 2
    (start, _), (progress, _), *_ = COMMANDS
    with serve(redis_url, tmp_path, RPA_BUS_SECRET=SECRET) as relay:
        line = start.replace(README_BASE, f"http://127.0.0.1:{relay.port}")
        refused = subprocess.run(
            ["bash", "-c", line + " --silent --write-out '\\n%{http_code}'"],
            capture_output=True, text=True, timeout=20 * UNIT_S,
            env={"PATH": os.environ.get("PATH", ""), "TOKEN": ""},
        )  # fmt: skip
        assert refused.stdout.rsplit("\n", 1)[-1] == "401", refused.stdout
        assert orjson.loads(refused.stdout.rsplit("\n", 1)[0])["error"]["code"] == "forbidden"
        first = orjson.loads(run(start, relay.port, token=token))
        second = orjson.loads(run(progress, relay.port, token=token))
        assert len(first["ids"]) == len(second["ids"]) == 1
        assert first["replayed"] is second["replayed"] is False
