"""The journal file on its own: records, torn last lines, adoption and its lock, release."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from producer._journal import Item, Journal, adopt_all


def item(seq: int) -> Item:
    event = {"type": "log", "ts": "2026-11-22T10:00:00.000Z", "message": f"m{seq}"}
    return Item("session:j-1", "pid1", seq, orjson.dumps(event), event)


def test_record_round_trip() -> None:
    a = Item("monitor:web-1", "pidx", 42, b'{"type":"metrics","ts":"t"}', {}, 60_000)
    b = Item.from_record(a.record().rstrip(b"\n"))
    assert (b.stream, b.pid, b.seq, b.window_ms) == ("monitor:web-1", "pidx", 42, 60_000)
    assert orjson.loads(b.env) == {"type": "metrics", "ts": "t"}


def test_live_journal_is_not_adopted_dead_one_is(spool_dir: Path) -> None:
    j = Journal.create(spool_dir, "pid1")
    j.append([item(1), item(2)])
    assert adopt_all(spool_dir) == []  # its owner holds the lock
    j.close()  # the owner "dies" without delivering
    (adopted,) = adopt_all(spool_dir)
    items, end = adopted.read(10)
    assert [i.seq for i in items] == [1, 2]
    assert end == adopted.size
    adopted.read_pos = end
    adopted.release()
    assert list(spool_dir.iterdir()) == []  # delivered: removed


def test_torn_last_line_is_ignored(spool_dir: Path) -> None:
    j = Journal.create(spool_dir, "pid1")
    j.append([item(1), item(2)])
    os.write(j.fd, item(3).record()[:25])  # killed mid-write
    j.close()
    (adopted,) = adopt_all(spool_dir)
    items, end = adopted.read(10)
    assert [i.seq for i in items] == [1, 2]
    adopted.read_pos = end
    assert not adopted.pending
    adopted.remove()


def test_damaged_line_in_the_middle_is_skipped(spool_dir: Path) -> None:
    j = Journal.create(spool_dir, "pid1")
    j.append([item(1)])
    os.write(j.fd, b'{"not": "a record"}\n')
    j.append([item(2)])
    j.close()
    (adopted,) = adopt_all(spool_dir)
    assert [i.seq for i in adopted.read(10)[0]] == [1, 2]
    adopted.close()


def test_release_cuts_the_delivered_head(spool_dir: Path) -> None:
    j = Journal.create(spool_dir, "pid1")
    j.append([item(k) for k in range(1, 6)])
    _items, end = j.read(2)
    j.read_pos = end
    j.release()
    (adopted,) = adopt_all(spool_dir)
    assert [i.seq for i in adopted.read(10)[0]] == [3, 4, 5]
    adopted.close()
    assert not list(spool_dir.glob("*.tmp"))


def test_a_line_longer_than_the_read_chunk(spool_dir: Path) -> None:
    j = Journal.create(spool_dir, "pid1")
    big = {"type": "log", "ts": "t", "data": "x" * 3_000_000}
    j.append([item(1), Item("session:j-1", "pid1", 2, orjson.dumps(big), big), item(3)])
    items, end = j.read(10)
    assert [i.seq for i in items] == [1, 2, 3]
    assert items[1].event["data"] == "x" * 3_000_000
    assert end == j.size
    j.close()
