"""``rpa-bus relay --workers N``: N relay processes on one port, supervised.

Each worker is an ordinary ``rpa-bus relay`` process bound with SO_REUSEPORT (the kernel
spreads new connections over the workers), named ``NAME-1`` .. ``NAME-N`` and therefore
reading with its own consumer group ``P:relay:NAME-i``: a group does not fan out, so
workers sharing one would each see only part of the events.

The parent only supervises: a worker that exits (crash, kill) is started again with a
capped, jittered backoff that resets once a worker has run for a while; a worker that exits
with code 2 (bad settings, port in use, a P:config mismatch: restarting cannot help)
stops them all and the parent exits 2. SIGTERM or SIGINT to the parent sends SIGTERM to
every worker (each closes its connections with 1001, so clients resume on another), waits
for them, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from relay import RelaySettings
from rpa_bus.redisio import Backoff, cancel_and_wait

log = logging.getLogger("rpa_bus.cli.relay")

# A worker that ran this long before exiting is restarted after the shortest delay again.
HEALTHY_RUN_S = 10.0
# How long workers get to close their connections after SIGTERM before SIGKILL.
STOP_GRACE_S = 15.0
# The CLI's exit code for errors a restart cannot fix.
FATAL_EXIT = 2


def worker_names(name: str, workers: int) -> list[str]:
    return [f"{name}-{i}" for i in range(1, workers + 1)]


def _worker_env(settings: RelaySettings, name: str) -> dict[str, str]:
    """The worker's settings: the parent's environment, with what the options decided."""
    env = dict(os.environ)
    env.update(
        RPA_BUS_REDIS_URL=settings.bus.redis_url,  # in the environment, not in `ps` output
        RPA_BUS_RELAY_HOST=settings.host,
        RPA_BUS_RELAY_PORT=str(settings.port),
        RPA_BUS_RELAY_NAME=name,
        RPA_BUS_RELAY_INSECURE="1" if settings.insecure else "0",
        RPA_BUS_RELAY_REUSE_PORT="1",
    )
    return env


class Supervisor:
    """Runs and restarts the workers until ``stop()``; ``run()`` returns the exit code."""

    def __init__(self, settings: RelaySettings, workers: int, *, verbose: bool = False) -> None:
        self.settings = settings
        self.names = worker_names(settings.name, workers)
        self._argv_tail = ["relay", *(["--verbose"] if verbose else [])]
        self._stop = asyncio.Event()
        self._fatal = False
        self.pids: dict[str, int] = {}

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        tasks = [
            asyncio.create_task(self._keep_running(name), name=f"worker:{name}")
            for name in self.names
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(tasks)
        return FATAL_EXIT if self._fatal else 0

    async def _keep_running(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial_s=0.5, max_s=30.0)
        env = _worker_env(self.settings, name)
        argv = [sys.executable, "-c", "from rpa_bus.cli import main; main()", *self._argv_tail]
        while not self._stop.is_set():
            proc = await asyncio.create_subprocess_exec(*argv, env=env)
            self.pids[name] = proc.pid
            log.info("worker %s started (pid %d)", name, proc.pid)
            started = loop.time()
            code = await self._wait_or_stop(proc)
            if code is None:  # stopping
                return
            if code == FATAL_EXIT:
                log.error("worker %s exited with code %d; stopping all workers", name, code)
                self._fatal = True
                self._stop.set()
                return
            if loop.time() - started >= HEALTHY_RUN_S:
                backoff.reset()
            delay = backoff.next_s()
            log.warning("worker %s (pid %d) exited (%d); restarting in %.1f s", name, proc.pid,
                        code, delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _wait_or_stop(self, proc: asyncio.subprocess.Process) -> int | None:
        """The worker's exit code, or None once it was stopped because we are stopping."""
        exited = asyncio.create_task(proc.wait(), name=f"wait:{proc.pid}")
        stopping = asyncio.create_task(self._stop.wait(), name=f"stop:{proc.pid}")
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if exited.done():
                return exited.result()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), STOP_GRACE_S)
            except TimeoutError:
                log.warning("worker pid %d did not stop in %.0f s; killing it", proc.pid,
                            STOP_GRACE_S)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await exited
            return None
        finally:
            await cancel_and_wait([exited, stopping])


async def supervise(settings: RelaySettings, workers: int, *, verbose: bool = False) -> int:
    """Run ``workers`` relay processes until SIGTERM/SIGINT; return the exit code."""
    supervisor = Supervisor(settings, workers, verbose=verbose)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stop)
    log.info(
        "relay: %d workers (%s) on %s:%d",
        workers,
        ", ".join(supervisor.names),
        settings.host,
        settings.port,
    )
    return await supervisor.run()
