"""Where the local bus is: the state file `rpa-bus up` leaves for `demo`, `emit` and friends.

`up` writes ``$XDG_STATE_HOME/rpa-bus/up.json`` with the Redis URL it serves and its pid;
commands that are not told a Redis URL (no option, no RPA_BUS_REDIS_URL) use it while that
process lives, so `rpa-bus demo` finds the embedded Redis without being told.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from rpa_bus import DEFAULT_REDIS_URL


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rpa-bus"


def up_file(environ: Mapping[str, str] | None = None) -> Path:
    return state_dir(environ) / "up.json"


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_up_state(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """What a running `rpa-bus up` announced, or None if none runs."""
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        state = orjson.loads(up_file(environ).read_bytes())
        if isinstance(state, dict) and _alive(state.get("pid")):
            return state
    return None


def write_up_state(state: dict[str, Any], environ: Mapping[str, str] | None = None) -> Path:
    path = up_file(environ)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({**state, "pid": os.getpid()}, option=orjson.OPT_INDENT_2))
    tmp.replace(path)
    return path


def clear_up_state(environ: Mapping[str, str] | None = None) -> None:
    path = up_file(environ)
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        if orjson.loads(path.read_bytes()).get("pid") == os.getpid():
            path.unlink()


def resolve_redis_url(option: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The Redis URL a command should use: option, RPA_BUS_REDIS_URL, a running `up`, default."""
    env = os.environ if environ is None else environ
    if option:
        return option
    if env.get("RPA_BUS_REDIS_URL"):
        return env["RPA_BUS_REDIS_URL"]
    state = read_up_state(env)
    if state and isinstance(state.get("redis_url"), str):
        return str(state["redis_url"])
    return DEFAULT_REDIS_URL
