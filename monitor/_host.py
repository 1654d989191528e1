"""Host metrics from psutil: CPU, memory, swap, disks, disk I/O, network, processes.

Counters (CPU times, disk I/O, network) become percentages and rates from the difference
with the previous reading, so the sampler keeps that reading; it is primed at
construction, so the first sample is already meaningful (unlike psutil's first
``cpu_percent()``, which is 0.0 for want of a baseline). A metric this host
cannot provide (a container without /proc/diskstats, a platform without load average) is
left out of the sample instead of failing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import psutil

log = logging.getLogger(__name__)

T = TypeVar("T")

# What psutil raises when a metric is not available here: OSError (no /proc/diskstats in
# a container, a mount gone), psutil.Error (AccessDenied, NoSuchProcess), and
# NotImplementedError (a platform without the counter). Nothing else: an AttributeError or
# a TypeError is a bug in this module (a misspelt field, a changed psutil API) and must
# surface, not quietly drop a metric from every sample. (Every function called here exists
# on every platform psutil >= 5.9 supports: getloadavg is emulated on Windows.)
UNREADABLE: Final = (OSError, psutil.Error, NotImplementedError)

# Read-only images (snap packages, CDs) are always 100% full: never worth an alert.
SKIP_FSTYPES: Final = frozenset({"squashfs", "iso9660", "udf", "cramfs", "erofs"})
MOUNTS_EVERY_S: Final = 60.0


def _is_loopback(nic: str) -> bool:
    return nic == "lo" or (nic.startswith("lo") and nic[2:].isdigit())


def _cpu_split(t: Any) -> tuple[float, float]:
    """(busy, total) seconds of one cpu_times() reading, as psutil.cpu_percent counts them."""
    total = float(sum(t))
    # On Linux guest time is already counted in user/nice.
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def _busy_delta(new: Any, old: Any) -> tuple[float, float]:
    """(busy, total) seconds spent between two readings of one core, never negative."""
    busy_new, total_new = _cpu_split(new)
    busy_old, total_old = _cpu_split(old)
    return max(0.0, busy_new - busy_old), max(0.0, total_new - total_old)


def _rate(new: float, old: float, dt: float) -> float:
    # A counter that went backwards was reset (interface re-created, driver reload).
    return round(max(0.0, new - old) / dt, 2) if dt > 0 else 0.0


class HostSampler:
    """Reads psutil each sample; keeps the previous counters to compute rates."""

    def __init__(self) -> None:
        self._missing: set[str] = set()
        self._mounts_cache: list[str] | None = None
        self._mounts_at = 0.0
        self._proc = psutil.Process()
        self._last_t = time.monotonic()
        self._last_proc_cpu = time.process_time()
        # Prime the CPU times and the counters: a first reading has no baseline (this is
        # why psutil.cpu_percent() first returns 0.0). The percentages are computed here
        # from our own baseline, not psutil's module-wide one, which any other caller in
        # the process (a relay in the same `rpa-bus up`) would move under our feet.
        self._last_cpu = self._read("cpu", lambda: psutil.cpu_times(percpu=True))
        self._last_disk_io = self._read("disk_io", lambda: psutil.disk_io_counters(nowrap=True))
        self._last_net = self._read("net", lambda: psutil.net_io_counters(pernic=True, nowrap=True))

    def _read(self, what: str, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except UNREADABLE as exc:
            if what not in self._missing:
                self._missing.add(what)
                log.warning("cannot read %s on this host, leaving it out: %r", what, exc)
            return None

    def sample(self) -> dict[str, Any]:
        """One reading of every host metric this platform provides."""
        now = time.monotonic()
        dt = now - self._last_t
        self._last_t = now
        out: dict[str, Any] = {}

        cpu: dict[str, Any] = {}
        times = self._read("cpu", lambda: psutil.cpu_times(percpu=True))
        last_cpu = self._last_cpu
        if times is not None and last_cpu is not None and len(times) == len(last_cpu):
            per_core = [_busy_delta(new, old) for new, old in zip(times, last_cpu, strict=True)]
            busy = sum(b for b, _ in per_core)
            spent = sum(t for _, t in per_core)
            cpu["percent"] = round(min(100.0, 100.0 * busy / spent), 1) if spent > 0 else 0.0
            cpu["per_core"] = [
                round(min(100.0, 100.0 * b / t), 1) if t > 0 else 0.0 for b, t in per_core
            ]
            cpu["count"] = len(per_core)
        self._last_cpu = times
        load = self._read("load", psutil.getloadavg)
        if load is not None:
            cpu["load"] = [round(x, 3) for x in load]
        if cpu:
            out["cpu"] = cpu

        vm = self._read("memory", psutil.virtual_memory)
        if vm is not None:
            out["memory"] = {
                "total": vm.total,
                "available": vm.available,
                "used": vm.total - vm.available,
                "percent": vm.percent,
            }
        sw = self._read("swap", psutil.swap_memory)
        if sw is not None:
            out["swap"] = {"total": sw.total, "used": sw.used, "percent": sw.percent}

        disks = self._disks(now)
        if disks is not None:
            out["disks"] = disks

        io = self._read("disk_io", lambda: psutil.disk_io_counters(nowrap=True))
        last_io = self._last_disk_io
        if io is not None and last_io is not None:
            out["disk_io"] = {
                "read_bytes_s": _rate(io.read_bytes, last_io.read_bytes, dt),
                "write_bytes_s": _rate(io.write_bytes, last_io.write_bytes, dt),
                "read_ops_s": _rate(io.read_count, last_io.read_count, dt),
                "write_ops_s": _rate(io.write_count, last_io.write_count, dt),
            }
        self._last_disk_io = io

        net = self._read("net", lambda: psutil.net_io_counters(pernic=True, nowrap=True))
        if net is not None and self._last_net is not None:
            out["net"] = self._net(net, self._last_net, dt)
        self._last_net = net

        pids = self._read("processes", psutil.pids)
        if pids is not None:
            out["processes"] = len(pids)

        proc_cpu = time.process_time()
        own: dict[str, Any] = {"cpu_s": round(proc_cpu - self._last_proc_cpu, 6)}
        self._last_proc_cpu = proc_cpu
        rss = self._read("monitor_rss", lambda: self._proc.memory_info().rss)
        if rss is not None:
            own["rss"] = rss
        out["monitor"] = own
        return out

    def _mounts(self, now: float) -> list[str] | None:
        # Mounts rarely change and listing them costs more than reading their usage:
        # list them again at most every MOUNTS_EVERY_S.
        if self._mounts_cache is not None and now - self._mounts_at < MOUNTS_EVERY_S:
            return self._mounts_cache
        parts = self._read("disks", lambda: psutil.disk_partitions(all=False))
        if parts is None:
            return None
        mounts = [p.mountpoint for p in parts if p.fstype not in SKIP_FSTYPES]
        # In a container the root is often an overlay, which psutil counts as virtual.
        self._mounts_cache = mounts or ["/"]
        self._mounts_at = now
        return self._mounts_cache

    def _disks(self, now: float) -> dict[str, Any] | None:
        mounts = self._mounts(now)
        if mounts is None:
            return None
        disks: dict[str, Any] = {}
        for mount in mounts:
            try:
                usage = psutil.disk_usage(mount)
            except UNREADABLE:
                continue  # unmounted meanwhile, or not ours to read
            disks[mount] = {
                "total": usage.total,
                "used": usage.used,
                "free": usage.free,
                "percent": usage.percent,
            }
        return disks

    @staticmethod
    def _net(new: dict[str, Any], old: dict[str, Any], dt: float) -> dict[str, Any]:
        names = ("rx_bytes_s", "tx_bytes_s", "rx_packets_s", "tx_packets_s")
        interfaces: dict[str, dict[str, float]] = {}
        total = dict.fromkeys(names, 0.0)
        for nic, c in new.items():
            before = old.get(nic)
            if before is None:
                continue  # appeared since the last sample: no baseline yet
            rates = {
                "rx_bytes_s": _rate(c.bytes_recv, before.bytes_recv, dt),
                "tx_bytes_s": _rate(c.bytes_sent, before.bytes_sent, dt),
                "rx_packets_s": _rate(c.packets_recv, before.packets_recv, dt),
                "tx_packets_s": _rate(c.packets_sent, before.packets_sent, dt),
            }
            interfaces[nic] = rates
            if not _is_loopback(nic):
                for key in names:
                    total[key] += rates[key]
        return {"total": {k: round(v, 2) for k, v in total.items()}, "interfaces": interfaces}
