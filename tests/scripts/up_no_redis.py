"""Run inside a fresh network namespace (no Redis answers anywhere) with no redis-server on
PATH: start `rpa-bus up --demo`, check what a newcomer would, stop it with Ctrl-C, and print
what was seen as one JSON line for tests/test_up.py to judge."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis

port, state = int(sys.argv[1]), Path(sys.argv[2])
subprocess.run(["/usr/sbin/ip", "link", "set", "lo", "up"], check=True)
env = {**os.environ, "XDG_STATE_HOME": str(state), "PATH": str(Path(sys.executable).parent)}
env.pop("RPA_BUS_REDIS_URL", None)
proc = subprocess.Popen(
    [str(Path(sys.executable).parent / "rpa-bus"), "up", "--demo", "--port", str(port)],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
)
seen: dict[str, object] = {}
try:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "healthz" not in seen:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                seen["healthz"] = [r.status, json.loads(r.read())]
        except OSError:
            time.sleep(0.2)
    for path in ("/", "/metrics"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            seen[path] = [r.status, r.read().decode()[:4000]]
    up = json.loads((state / "rpa-bus" / "up.json").read_text())
    seen["up.json"] = up
    client = redis.Redis.from_url(up["redis_url"], socket_timeout=2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not client.xlen("rpa:sessions"):
        time.sleep(0.2)
    seen["sessions_index"] = [json.loads(f[b"e"]) for _, f in client.xrange("rpa:sessions")]
    client.close()
    # The archiver `up` runs: the demo's events reach the SQLite file in the state folder.
    archive, seen["archived"] = state / "rpa-bus" / "archive.db", 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not seen["archived"]:
        try:
            with sqlite3.connect(f"file:{archive}?mode=ro", uri=True) as db:
                seen["archived"] = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            db.close()
        except sqlite3.Error:
            pass
        time.sleep(0.2)
finally:
    proc.send_signal(signal.SIGINT)
    try:
        seen["exit"] = proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        seen["exit"] = "timeout"
    seen["output"] = proc.stdout.read() if proc.stdout else ""
pid = seen.get("up.json", {}).get("embedded_redis_pid")  # type: ignore[union-attr]
alive = True
if isinstance(pid, int):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        alive = False
seen["embedded_alive_after"] = alive
seen["up_json_left"] = (state / "rpa-bus" / "up.json").exists()
print(json.dumps(seen))
