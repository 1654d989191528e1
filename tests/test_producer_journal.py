"""The journal file on its own: records, torn last lines, adoption and its lock, release,
its target, fsync."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from producer import list_journals
from producer._journal import Item, Journal, adopt_all, journal_fsync_from_env, target_of
from rpa_bus import ConfigError, Settings

# (target, prefix, fsync policy) of the journals below.
HERE = ("redis://127.0.0.1:6379/0", "rpa", "everysec")


def create(spool_dir: Path, target: str = HERE[0], fsync: str = "everysec") -> Journal:
    return Journal.create(spool_dir, "pid1", target, "rpa", fsync)


def item(seq: int) -> Item:
    event = {"type": "log", "ts": "2026-11-22T10:00:00.000Z", "message": f"m{seq}"}
    return Item("session:j-1", "pid1", seq, orjson.dumps(event), event)


def test_record_round_trip() -> None:
    a = Item("monitor:web-1", "pidx", 42, b'{"type":"metrics","ts":"t"}', {}, 60_000)
    b = Item.from_record(a.record().rstrip(b"\n"))
    assert (b.stream, b.pid, b.seq, b.window_ms) == ("monitor:web-1", "pidx", 42, 60_000)
    assert orjson.loads(b.env) == {"type": "metrics", "ts": "t"}


def test_live_journal_is_not_adopted_dead_one_is(spool_dir: Path) -> None:
    j = create(spool_dir)
    j.append([item(1), item(2)])
    assert adopt_all(spool_dir, *HERE) == []  # its owner holds the lock
    j.close()  # the owner "dies" without delivering
    (adopted,) = adopt_all(spool_dir, *HERE)
    items, end = adopted.read(10)
    assert [i.seq for i in items] == [1, 2]
    assert end == adopted.size
    adopted.read_pos = end
    adopted.release()
    assert list(spool_dir.iterdir()) == []  # delivered: removed


def test_torn_last_line_is_ignored(spool_dir: Path) -> None:
    j = create(spool_dir)
    j.append([item(1), item(2)])
    os.write(j.fd, item(3).record()[:25])  # killed mid-write
    j.close()
    (adopted,) = adopt_all(spool_dir, *HERE)
    items, end = adopted.read(10)
    assert [i.seq for i in items] == [1, 2]
    adopted.read_pos = end
    assert not adopted.pending
    adopted.remove()


def test_damaged_line_in_the_middle_is_skipped(spool_dir: Path) -> None:
    j = create(spool_dir)
    j.append([item(1)])
    os.write(j.fd, b'{"not": "a record"}\n')
    j.append([item(2)])
    j.close()
    (adopted,) = adopt_all(spool_dir, *HERE)
    assert [i.seq for i in adopted.read(10)[0]] == [1, 2]
    adopted.close()


def test_release_cuts_the_delivered_head(spool_dir: Path) -> None:
    j = create(spool_dir)
    j.append([item(k) for k in range(1, 6)])
    _items, end = j.read(2)
    j.read_pos = end
    j.release()
    (adopted,) = adopt_all(spool_dir, *HERE)
    assert [i.seq for i in adopted.read(10)[0]] == [3, 4, 5]
    adopted.close()
    assert not list(spool_dir.glob("*.tmp"))


def test_a_line_longer_than_the_read_chunk(spool_dir: Path) -> None:
    j = create(spool_dir)
    big = {"type": "log", "ts": "t", "data": "x" * 3_000_000}
    j.append([item(1), Item("session:j-1", "pid1", 2, orjson.dumps(big), big), item(3)])
    items, end = j.read(10)
    assert [i.seq for i in items] == [1, 2, 3]
    assert items[1].event["data"] == "x" * 3_000_000
    assert end == j.size
    j.close()


def test_a_journal_is_adopted_only_for_its_target_and_prefix(spool_dir: Path) -> None:
    j = create(spool_dir, target="redis://10.0.0.5:6379/0")
    j.append([item(1), item(2)])
    j.close()
    assert adopt_all(spool_dir, *HERE) == []  # another Redis: left alone
    assert adopt_all(spool_dir, "redis://10.0.0.5:6379/0", "other", "no") == []  # prefix
    (info,) = list_journals(spool_dir)
    assert (info.target, info.prefix, info.events, info.live) == (
        "redis://10.0.0.5:6379/0",
        "rpa",
        2,
        False,
    )
    (adopted,) = adopt_all(spool_dir, "redis://10.0.0.5:6379/0", "rpa", "no")
    assert [i.seq for i in adopted.read(10)[0]] == [1, 2]
    assert list_journals(spool_dir)[0].live  # locked by its adopter now
    adopted.close()


def test_a_journal_from_before_headers_is_adopted_by_anyone(spool_dir: Path) -> None:
    (spool_dir / "1-old.journal").write_bytes(item(1).record() + item(2).record())
    (adopted,) = adopt_all(spool_dir, *HERE)
    assert [i.seq for i in adopted.read(10)[0]] == [1, 2]
    adopted.close()
    assert list_journals(spool_dir)[0].target is None


def test_target_is_the_connection_without_credentials() -> None:
    def of(url: str) -> str:
        return target_of(Settings(redis_url=url))

    assert of("redis://:secret@127.0.0.1:6379/0") == of("redis://127.0.0.1:6379")
    assert "secret" not in of("redis://u:secret@h:1/2")
    assert of("redis://h:1/2") != of("redis://h:1/3")
    assert of("redis://h:1/2") != of("redis://h:2/2")
    assert of("redis+cluster://b:2,a:1") == of("redis+cluster://u:pw@a:1,b:2")
    assert of("redis+sentinel://s:1/main/0") != of("redis+sentinel://s:1/other/0")


def test_fsync_policy(spool_dir: Path) -> None:
    always = create(spool_dir, fsync="always")
    always.append([item(1)])
    always.append([item(2)])
    assert always.syncs == 2  # one per append
    always.close()
    never = Journal.create(spool_dir, "pid2", HERE[0], "rpa", "no")
    never.append([item(1)])
    never.close()
    assert never.syncs == 0
    everysec = Journal.create(spool_dir, "pid3", HERE[0], "rpa", "everysec")
    everysec.append([item(1)])
    everysec.append([item(2)])
    assert everysec.syncs == 0  # within the second
    everysec._synced_at -= 1.0  # a second later
    everysec.sync_if_due()
    assert everysec.syncs == 1
    everysec.append([item(3)])
    everysec.close()  # what is left is synced when the journal is let go
    assert everysec.syncs == 2
    assert journal_fsync_from_env({}) == "everysec"
    assert journal_fsync_from_env({"RPA_BUS_JOURNAL_FSYNC": "always"}) == "always"
    with pytest.raises(ConfigError, match="always, everysec, no"):
        journal_fsync_from_env({"RPA_BUS_JOURNAL_FSYNC": "sometimes"})


def test_a_reader_probing_the_lock_does_not_stop_an_adopter(spool_dir: Path) -> None:
    """``list_journals`` (``rpa-bus status``) takes a shared lock for a moment; a producer
    starting in that moment still adopts the journal (a live owner's exclusive lock is
    not waited for)."""
    import fcntl
    import threading

    j = create(spool_dir)
    j.append([item(1)])
    j.close()
    reader = os.open(j.path, os.O_RDONLY)
    fcntl.flock(reader, fcntl.LOCK_SH)
    threading.Timer(0.05, os.close, (reader,)).start()  # the reader lets go 50 ms later
    (adopted,) = adopt_all(spool_dir, *HERE)
    live = Journal.create(spool_dir, "pid2", HERE[0], "rpa", "no")  # an owner that lives
    assert adopt_all(spool_dir, *HERE) == []  # not waited for: refused at once
    adopted.close()
    live.close()
