"""Session search in the archive (schema 3, ``sessions.texts``): prints figures, never
passes or fails.

    python bench/archive_search.py [--rounds 7] [--sessions 100000] [--parts 1,2] [--sync-off]
                                    [--trgm]

1. What keeping the text costs the archiver per event: ``session_texts`` on one batch of
   1,000 progress events (each with its own message, ~200-byte envelopes), beside
   ``fold_session_runs`` on the same batch (the fold the archiver already does), and
   ``put`` of such batches into a fresh SQLite store with and without it (the "without"
   side replaces ``session_texts`` by one that keeps the text as it was), same run, the
   sides alternating.
2. What a search costs: ``--sessions`` sessions with ~300 characters of text each (12
   messages), in SQLite and in a private PostgreSQL (initdb as for the tests), then
   ``sessions(q=...)`` for a text no session has (every row is read), one every session
   has, one on an id, and no ``q`` (limit 50), median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import orjson  # noqa: E402

from rpa_bus import now_ts  # noqa: E402
from rpa_bus.archive import Record, open_store  # noqa: E402
from rpa_bus.archive import _store as store_module  # noqa: E402
from rpa_bus.archive._store import fold_session, fold_session_runs, session_texts  # noqa: E402
from tests._postgres import LocalPostgres  # noqa: E402

MS0 = 1_700_000_000_000


def progress_rows(sid: str, n: int, ms0: int = MS0) -> list[Record]:
    rows = []
    for i in range(n):
        ms = ms0 + i
        data = orjson.dumps(
            {
                "v": 1,
                "type": "progress",
                "ts": now_ts(ms / 1000),
                "session": sid,
                "producer": "bench-host-1234",
                "seq": i + 1,
                "step": i + 1,
                "total": n,
                "percent": round(100 * (i + 1) / n, 1),
                "message": f"Tela {i + 1}: dados do segurado preenchidos",
            }
        )
        rows.append(Record(f"session:{sid}", "e1", f"{ms}-0", data))
    return rows


def timed(fn: Callable[[], Any], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def us_per(values: list[float], n: int) -> str:
    return ", ".join(f"{v / n * 1e6:.2f}" for v in values)


async def part_cost(args: argparse.Namespace, tmp: Path) -> None:
    rows = progress_rows("bench-1", 1000)
    size = sum(len(r.data) for r in rows) / len(rows)
    print(f"1. one batch of 1,000 progress events (~{size:.0f} bytes each), {args.rounds} rounds")
    fold = timed(lambda: fold_session_runs("bench-1", None, None, rows), args.rounds)
    texts = timed(lambda: session_texts(None, None, rows), args.rounds)
    # A session whose text is full (65,536 characters), then the batch: nothing decoded.
    full_text = session_texts(None, None, progress_rows("x", 2000))
    before = fold_session("bench-1", None, [Record("session:bench-1", "e1", "1-0", b"{}")])
    full = timed(lambda: session_texts(full_text, before, rows), args.rounds)
    print(f"   fold_session_runs   us/event: {us_per(fold, 1000)}")
    print(f"   session_texts       us/event: {us_per(texts, 1000)}")
    print(f"   session_texts, text already full: {us_per(full, 1000)}")
    ratio = statistics.median(texts) / statistics.median(fold)
    print(f"   median texts / median fold: {ratio:.2f}")

    # put(): batches of 1,000 (one session each) into two fresh SQLite stores, one with
    # the text and one without (session_texts replaced by one that keeps the text as it
    # was), batch by batch in turn (the order turning every batch): a busy machine's
    # drifts hit both sides alike.
    real = store_module.session_texts

    def keep(texts: str | None, current: Any, rows: Any) -> str:
        return texts or ""

    sides: dict[str, list[float]] = {"with texts": [], "without": []}
    for r in range(args.rounds):
        stores = {
            side: await open_store(f"sqlite://{tmp / f'put-{r}-{side[:4]}.db'}") for side in sides
        }
        if args.sync_off:  # the CPU's part alone: no fsync per commit
            for store in stores.values():
                store._conn.execute("PRAGMA synchronous=OFF")  # type: ignore[attr-defined]
        spent = dict.fromkeys(sides, 0.0)
        for side, store in stores.items():
            store_module.session_texts = real if side == "with texts" else keep  # type: ignore[assignment]
            await store.put(progress_rows("warm-up", 1000))  # untimed: the file's first writes
        for i in range(20):
            batch = progress_rows(f"s{i}", 1000, MS0 + i * 10_000)
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for side in order:
                store_module.session_texts = real if side == "with texts" else keep  # type: ignore[assignment]
                t0 = time.perf_counter()
                await stores[side].put(batch)
                spent[side] += time.perf_counter() - t0
        for side, store in stores.items():
            sides[side].append(spent[side])
            await store.close()
    store_module.session_texts = real
    for side, values in sides.items():
        sync = "OFF" if args.sync_off else "FULL"
        each = us_per(values, 20_000)
        print(f"   put 20 x 1,000 into SQLite (synchronous={sync}), {side}: us/event {each}")
    ratio = statistics.median(sides["with texts"]) / statistics.median(sides["without"])
    print(f"   median with / without: {ratio:.3f}")
    per_round = [w / o for w, o in zip(sides["with texts"], sides["without"], strict=True)]
    print(f"   per-round ratios: {', '.join(f'{x:.3f}' for x in per_round)}")


SQL_TEXT = (
    "tela {i}: login ok\ncaptcha resolvido\ntela 2: dados do segurado\n"
    "tela 3: cotação calculada\ntela 4: coberturas escolhidas\ntela 5: pagamento\n"
    "tela 6: documentos anexados\ntela 7: revisão\ntela 8: proposta {i} enviada\n"
    "tela 9: protocolo gerado\ntela 10: e-mail enviado\ntela 11: concluído"
)


def session_rows(n: int) -> list[tuple[Any, ...]]:
    out = []
    for i in range(n):
        ts = now_ts((MS0 + i * 1000) / 1000)
        out.append(
            (f"quote-{i:06d}", "e1", "finished", ts, "tela 11: concluído", SQL_TEXT.format(i=i))
        )
    return out


QUERIES = {
    "q in no session (all rows read)": {"q": "no such text"},
    "q in every session (first 50)": {"q": "captcha"},
    "q on one id": {"q": "quote-000042"},
    "q in one session's earlier message": {"q": "proposta 77 enviada"},
    "no q": {},
}


async def part_search(args: argparse.Namespace, tmp: Path) -> None:
    n = args.sessions
    rows = session_rows(n)
    text = sum(len(r[-1]) for r in rows) / n
    print(f"2. search over {n:,} sessions (~{text:.0f} characters of text each), limit 50, "
          f"median of {args.rounds}")  # fmt: skip
    insert = (
        "INSERT INTO sessions (session, epoch, status, updated, message, texts) "
        "VALUES ({0}, {0}, {0}, {0}, {0}, {0})"
    )
    sqlite_url = f"sqlite://{tmp / 'search.db'}"
    store = await open_store(sqlite_url)
    conn = store._conn  # type: ignore[attr-defined]
    conn.execute("BEGIN")
    conn.executemany(insert.format("?"), rows)
    conn.execute("COMMIT")
    await measure("SQLite", store, args.rounds)
    await store.close()

    pg = LocalPostgres(tmp / "pg")
    pg.init()
    pg.start()
    try:
        pg.psql("CREATE DATABASE search")
        url = pg.url_for("search")
        store = await open_store(url)
        import psycopg

        async with await psycopg.AsyncConnection.connect(url) as c:
            async with c.cursor() as cur:
                await cur.executemany(insert.format("%s"), rows)
            await c.execute("ANALYZE sessions")
            await c.commit()
        await measure("PostgreSQL", store, args.rounds)
        await store.close()
        if args.trgm:
            await trgm(url, args.rounds)
    finally:
        pg.stop("immediate")


_REAL_FILTERS = store_module._session_filters


def _schema_2_filters(*args: Any) -> tuple[str, list[Any]]:
    """The filter as it was before schema 3 (id, last message, last error): the baseline."""
    where, values = _REAL_FILTERS(*args)
    if args[1]:
        ph = args[5]
        where = where.replace(f" OR texts LIKE {ph} ESCAPE '\\'", "")
        values = values[:3] + values[4:]
    return where, values


async def measure(engine: str, store: Any, rounds: int) -> None:
    """Each query ``rounds`` times, in turn with the schema 2 query (same rows)."""
    for name, kw in QUERIES.items():
        values: dict[str, list[float]] = {"now": [], "schema 2": []}
        found = dict.fromkeys(values, 0)
        for r in range(rounds):
            for side in list(values)[:: 1 if r % 2 == 0 else -1]:
                store_module._session_filters = (  # type: ignore[assignment]
                    _REAL_FILTERS if side == "now" else _schema_2_filters
                )
                t0 = time.perf_counter()
                page = await store.sessions(limit=50, **kw)
                values[side].append(time.perf_counter() - t0)
                found[side] = len(page.sessions)
        store_module._session_filters = _REAL_FILTERS
        now, before = (statistics.median(values[s]) * 1000 for s in values)
        spread = sorted(v * 1000 for v in values["now"])
        print(f"   {engine:10} {name:36} found {found['now']:2} (schema 2: "
              f"{found['schema 2']:2})  median {now:6.1f} ms (min {spread[0]:.1f}, max "
              f"{spread[-1]:.1f}); schema 2 query {before:6.1f} ms")  # fmt: skip


async def trgm(url: str, rounds: int) -> None:
    """What a pg_trgm GIN index on ``texts`` would give a texts-only search (the store's
    query has an ``OR`` over four columns, which one index cannot serve)."""
    import psycopg

    sql = "SELECT session FROM sessions WHERE texts LIKE %s ORDER BY updated DESC LIMIT 51"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        for label in ("texts LIKE, no index", "texts LIKE, GIN gin_trgm_ops"):
            if "GIN" in label:
                await c.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                t0 = time.perf_counter()
                await c.execute("CREATE INDEX sessions_texts_trgm ON sessions "
                                "USING gin (texts gin_trgm_ops)")  # fmt: skip
                built = time.perf_counter() - t0
                await c.execute("ANALYZE sessions")
                print(f"   PostgreSQL GIN trigram index built in {built:.1f} s")
            for needle in ("%no such text%", "%proposta 77 enviada%", "%captcha%"):
                values = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    cur = await c.execute(sql, (needle,))
                    found = len(await cur.fetchall())
                    values.append((time.perf_counter() - t0) * 1000)
                print(f"   PostgreSQL {label:30} {needle:24} found {found:2} "
                      f"median {statistics.median(values):7.1f} ms")  # fmt: skip


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--parts", default="1,2")
    ap.add_argument("--sync-off", action="store_true", help="1's puts without fsync")
    ap.add_argument("--trgm", action="store_true", help="2 also tries a pg_trgm index")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rpa-bus-bench-search-"))
    try:
        parts = {int(p) for p in args.parts.split(",")}
        if 1 in parts:
            await part_cost(args, tmp)
        if 2 in parts:
            await part_search(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
