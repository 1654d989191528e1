"""The dashboard's job view and history in real headless Chromium (issues 16 and 14).

A real relay serves the page and reads a private Redis; the runs are written as the
producer writes them (``BusWriter``: stream entry, folded state, sessions index), with
the job-view envelope of docs/contract.md ("Job view"): `step` start/end with attempts,
outcomes and durations, `log` with levels, `artifact` references, `job` on `started`.
Assertions read the page's DOM: timeline rows carry their step (`.tl-row[data-step]`),
bars their attempt and outcome, log rows their id, level, type and step.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Page

from producer import Producer
from rpa_bus import Keys, decode, now_ts
from tests._browser import (
    BusWriter,
    RelayThread,
    archiver,
    chromium_page,
    client,
    flushed,
    producer,
    relay,
)
from tests._wait import wait_for
from tests.conftest import UNIT_S

# Shared fixtures (tests/_browser.py), used by name.
__all__ = ["client", "producer", "relay"]

WAIT_S = 15.0


@pytest.fixture
def page(relay: RelayThread) -> Iterator[Page]:
    with chromium_page(relay.base_url) as (p, console_errors):
        yield p
        # A broken thumbnail and a 404 from an absent endpoint are the browser's network
        # messages, not the page's errors.
        network = ("Failed to load resource", "WebSocket connection to")
        assert [e for e in console_errors if not e.startswith(network)] == []


class Run:
    """One robot run written event by event, at times ``t0 + k`` seconds."""

    def __init__(self, w: BusWriter, sid: str, t0_s: float, *, job: str = "quote-robot") -> None:
        self.w, self.sid, self.t0_s, self.job = w, sid, t0_s, job
        self.ids: list[str] = []

    def at(self, k: float) -> str:
        return now_ts(self.t0_s + k)

    def ev(self, kind: str, k: float, **fields: Any) -> str:
        entry_id = self.w.session_event(self.sid, kind, ts=self.at(k), **fields)
        self.ids.append(entry_id)
        return entry_id

    def start(self, total: int) -> None:
        self.ev("started", 0, job=self.job, total=total)

    def step(
        self, n: int, name: str, k: float, dur: float, outcome: str = "ok", attempt: int = 1
    ) -> None:
        self.ev("step", k, step=n, phase="start", attempt=attempt, message=name)
        fields: dict[str, Any] = {}
        if outcome == "failed":
            fields["error"] = "insurer site returned HTTP 502"
        self.ev(
            "step", k + dur, step=n, phase="end", attempt=attempt, outcome=outcome,
            duration_s=dur, **fields,
        )  # fmt: skip


def failing_run_with_retry(w: BusWriter, sid: str, base_url: str, t0_s: float) -> Run:
    """Login ok; driver details retried once (with a screenshot); estimates fail."""
    r = Run(w, sid, t0_s)
    r.start(total=4)
    r.step(1, "Login", 0.1, 1.2)
    r.ev("log", 0.5, step=1, level="debug", message="form found")
    r.ev("step", 1.5, step=2, phase="start", attempt=1, message="Driver details")
    r.ev("log", 2.0, step=2, level="warning", message="captcha shown")
    r.ev("step", 3.5, step=2, phase="end", attempt=1, outcome="retried", duration_s=2.0)
    r.ev("step", 3.6, step=2, phase="start", attempt=2, message="Driver details")
    r.ev("log", 4.0, step=2, level="info", message="captcha solved")
    shot = {"kind": "screenshot", "url": f"{base_url}/favicon.svg", "name": "driver.png",
            "mime": "image/svg+xml"}  # fmt: skip
    r.ev("artifact", 4.5, step=2, artifact=shot)
    r.ev("step", 5.1, step=2, phase="end", attempt=2, outcome="ok", duration_s=1.5)
    r.ev("step", 5.2, step=3, phase="start", attempt=1, message="Premium estimates")
    broken = {"kind": "screenshot", "url": f"{base_url}/no-such-shot.png", "name": "estimates.png"}
    r.ev("artifact", 6.0, step=3, artifact=broken)
    r.ev("artifact", 6.1, step=3, artifact={"kind": "har", "path": "/var/rpa/run.har"})
    r.ev("log", 7.0, step=3, level="error", message="HTTP 502 from /quote")
    r.ev(
        "step", 8.2, step=3, phase="end", attempt=1, outcome="failed", duration_s=3.0,
        error="insurer site returned HTTP 502",
    )  # fmt: skip
    msg = "insurer site returned HTTP 502"
    r.ev("failed", 8.3, message=msg, error=msg)
    return r


def timeline(page: Page) -> list[dict[str, Any]]:
    """What the timeline shows, row by row: the comparable picture of a run."""
    rows: list[dict[str, Any]] = page.evaluate(
        """() => [...document.querySelectorAll('#timeline .tl-row')].map(r => ({
            step: r.dataset.step, state: r.dataset.state, failing: r.classList.contains('failing'),
            name: r.querySelector('.tl-name').textContent,
            retries: r.querySelector('.tl-retries').textContent,
            dur: r.querySelector('.tl-dur').textContent,
            bars: [...r.querySelectorAll('.tl-bar')].map(b => [b.dataset.outcome,
                  b.dataset.attempt, b.style.left, b.style.width]),
            arts: [...r.querySelectorAll('.tl-arts > a, .tl-arts > span:not(.art-more)')]
                  .map(a => a.textContent || a.querySelector('img')?.alt),
        }))"""
    )
    return rows


def visible_log(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#log tr[data-id]", "rows => rows.filter(r => !r.hidden).map(r => r.dataset.id)"
    )
    return ids


def test_failing_run_with_a_retry_reads_on_the_timeline(
    page: Page, relay: RelayThread, client: redis.Redis
) -> None:
    run = failing_run_with_retry(BusWriter(client), "quote-31", relay.base_url, time.time() - 60)
    page.goto("/#session=quote-31")
    wait_for(lambda: len(visible_log(page)) == len(run.ids), timeout_s=WAIT_S, what="the whole log")
    rows = wait_for(
        lambda: (t := timeline(page)) and len(t) == 3 and t[2]["failing"] and t,
        timeout_s=WAIT_S,
        what="three steps, the last failing",
    )
    one, two, three = rows
    assert (one["name"], one["state"], one["dur"], one["retries"]) == ("Login", "ok", "1.2s", "")
    # Both attempts of step 2 side by side: the retried one, then the one that passed.
    assert [b[:2] for b in two["bars"]] == [["retried", "1"], ["ok", "2"]]
    assert two["retries"] == "\N{MULTIPLICATION SIGN}2"
    assert two["dur"] == "1.5s"
    assert float(two["bars"][0][2].rstrip("%")) < float(two["bars"][1][2].rstrip("%"))
    assert (three["state"], three["dur"], three["bars"][0][0]) == ("failed", "3.0s", "failed")
    # Bar lengths are the durations, on one scale (the run lasted 8.3 s).
    widths = [float(r["bars"][-1][3].rstrip("%")) for r in rows]
    assert widths[0] == pytest.approx(100 * 1.2 / 8.3, abs=0.1)
    assert widths[2] == pytest.approx(100 * 3.0 / 8.3, abs=0.1)

    note = page.text_content("#timeline .tl-error") or ""
    assert "Failed at step 3 · Premium estimates" in note
    assert "HTTP 502" in note
    assert page.text_content("#timeline .tl-head") is not None
    assert "quote-robot" in (page.text_content("#timeline .tl-head") or "")

    # Hover: times, duration, outcome and the attempt's own log lines.
    page.hover('.tl-row[data-step="2"] .tl-bar[data-attempt="1"]')
    tip = page.text_content("#tl-tip") or ""
    assert page.is_visible("#tl-tip")
    assert "Step 2 · Driver details" in tip
    assert "retried · attempt 1 of 2" in tip
    assert "2.0s" in tip
    assert "\N{RIGHTWARDS ARROW}" in tip
    assert "captcha shown" in tip
    assert "captcha solved" not in tip
    page.hover('.tl-row[data-step="3"] .tl-bar')
    tip = page.text_content("#tl-tip") or ""
    assert "insurer site returned HTTP 502" in tip
    assert "HTTP 502 from /quote" in tip
    page.mouse.move(5, 5)
    wait_for(lambda: page.is_hidden("#tl-tip"), timeout_s=WAIT_S, what="the card to go")

    # Artifacts beside their step: a loaded image, a broken one as its label in the same
    # box, a path as text (never a link).
    thumb = '.tl-row[data-step="2"] .tl-arts a.thumb img'
    wait_for(
        lambda: page.evaluate(
            f"() => {{ const i = document.querySelector('{thumb}'); "
            "return !!i && i.complete && i.naturalWidth > 0; }"
        ),
        timeout_s=WAIT_S,
        what="the step-2 screenshot to load",
    )
    broken = '.tl-row[data-step="3"] .thumb.broken'
    wait_for(lambda: page.is_visible(broken), timeout_s=WAIT_S, what="the broken image's label")
    assert page.text_content(broken) == "estimates.png"
    assert page.text_content('.tl-row[data-step="3"] .art-chip.path') == "har"
    assert page.get_attribute('.tl-row[data-step="3"] .art-chip.path', "href") is None
    sizes = page.evaluate(
        """() => {
            const box = (sel, k) => [...document.querySelectorAll(sel)]
                .map(e => e.getBoundingClientRect()[k]);
            return box('.tl-row', 'height').concat(box('#timeline .thumb', 'width'));
        }"""
    )
    assert sizes == [22, 22, 22, 32, 32]

    # A click on a step's label shows only its events; again, all of them.
    page.click('.tl-row[data-step="2"] .tl-label')
    step2 = [i for i, k in zip(run.ids, _steps_of(client, "quote-31"), strict=True) if k == 2]
    wait_for(lambda: visible_log(page) == step2, timeout_s=WAIT_S, what="step 2's events")
    assert page.input_value("#log-step") == "2"
    page.click('.tl-row[data-step="2"] .tl-label')
    wait_for(lambda: visible_log(page) == run.ids, timeout_s=WAIT_S, what="all events again")
    # The failure note leads to the failing step's events.
    page.click("#timeline .tl-error")
    wait_for(lambda: page.input_value("#log-step") == "3", timeout_s=WAIT_S, what="step 3")


def _steps_of(client: redis.Redis, sid: str) -> list[int | None]:
    entries = client.xrange(Keys().session(sid))
    return [decode(fields[b"e"]).get("step") for _, fields in entries]


def test_log_filters_by_level_type_step_and_text(
    page: Page, relay: RelayThread, client: redis.Redis
) -> None:
    run = failing_run_with_retry(BusWriter(client), "quote-32", relay.base_url, time.time() - 60)
    page.goto("/#session=quote-32")
    wait_for(lambda: visible_log(page) == run.ids, timeout_s=WAIT_S, what="the log")
    levels: list[str] = page.eval_on_selector_all(
        "#log tr[data-id]", "rows => rows.map(r => r.dataset.level)"
    )
    by_id = dict(zip(run.ids, levels, strict=True))
    rank = {"debug": 0, "info": 1, "warning": 2, "error": 3}

    page.select_option("#log-level", "warning")
    want = [i for i in run.ids if rank[by_id[i]] >= 2]
    wait_for(lambda: visible_log(page) == want, timeout_s=WAIT_S, what="warning and up")
    # The retried end is a warning, the failed end, the error log and `failed` errors.
    assert sorted(by_id[i] for i in want) == ["error", "error", "error", "warning", "warning"]
    assert f"{len(want)} of {len(run.ids)} events" in (page.text_content("#log-sub") or "")

    page.select_option("#log-level", "")
    page.select_option("#log-type", "log")
    wait_for(lambda: len(visible_log(page)) == 4, timeout_s=WAIT_S, what="the 4 log lines")
    page.select_option("#log-step", "3")
    wait_for(lambda: len(visible_log(page)) == 1, timeout_s=WAIT_S, what="step 3's log line")
    assert "HTTP 502 from /quote" in (page.text_content("#log tr[data-id]:not([hidden])") or "")

    page.select_option("#log-type", "")
    page.select_option("#log-step", "")
    page.fill("#log-search", "CAPTCHA")
    wait_for(lambda: len(visible_log(page)) == 2, timeout_s=WAIT_S, what="the captcha lines")
    page.fill("#log-search", "no such words")
    wait_for(lambda: page.is_visible("#log-none"), timeout_s=WAIT_S, what="'no event matches'")
    # Typing "/" in the search box types it (the page's "/" shortcut leaves inputs alone).
    page.fill("#log-search", "")
    page.type("#log-search", "/quote")
    assert page.input_value("#log-search") == "/quote"
    wait_for(lambda: len(visible_log(page)) == 1, timeout_s=WAIT_S, what="the /quote line")

    # New events obey the filters as they arrive.
    w = BusWriter(client)
    w.session_event("quote-32", "log", level="info", message="late line about /quote")
    wait_for(lambda: len(visible_log(page)) == 2, timeout_s=WAIT_S, what="the live line")


def test_late_joiner_sees_the_same_timeline_as_a_page_open_from_the_start(
    page: Page, relay: RelayThread, producer: Producer
) -> None:
    """The real producer's steps (a retry, levels, an artifact, a step that raises), watched
    live by one page and replayed by one opened after the run: the same timeline."""
    sid = "quote-33"
    page.goto(f"/#session={sid}")
    wait_for(lambda: "live" in (page.text_content("#log-sub") or ""), timeout_s=WAIT_S, what="live")
    bar = '.tl-row[data-step="2"] .tl-bar'
    width = f"() => document.querySelector('{bar}').getBoundingClientRect().width"

    def robot() -> None:
        with producer.session(sid, total=3, job="quote-robot") as s:
            with s.step(1, "Login"):
                s.log("form found", level="debug")
            with s.step(2, "Driver details") as attempt:
                s.log("captcha shown", level="warning")
                flushed(producer)
                wait_for(
                    lambda: page.get_attribute(bar, "data-outcome") == "running",
                    timeout_s=WAIT_S,
                    what="step 2 running",
                )
                # The current step grows live, with no event arriving.
                first = page.evaluate(width)
                wait_for(lambda: page.evaluate(width) > first + 5, timeout_s=WAIT_S, what="growth")
                attempt.retry("captcha")
            with s.step(2, "Driver details"):
                url = f"{relay.base_url}/favicon.svg"
                s.artifact("screenshot", url, name="driver.png", mime="image/svg+xml")
            with s.step(3, "Premium estimates"):
                s.error("HTTP 502 from /quote")
                raise RuntimeError("insurer site returned HTTP 502")

    with pytest.raises(RuntimeError):
        robot()
    flushed(producer)
    wait_for(
        lambda: page.get_attribute("#log-status", "data-status") == "failed",
        timeout_s=WAIT_S,
        what="the run to fail",
    )
    live_view = wait_for(
        lambda: (t := timeline(page)) and len(t) == 3 and t[2]["failing"] and t,
        timeout_s=WAIT_S,
        what="the live page's timeline of the failed run",
    )
    assert [b[0] for b in live_view[1]["bars"]] == ["retried", "ok"]
    assert live_view[1]["arts"] == ["driver.png"]
    note = page.text_content("#timeline .tl-error") or ""
    assert "Failed at step 3 · Premium estimates" in note
    assert "insurer site returned HTTP 502" in note

    # A page opened after the run replays the same events: the same picture.
    assert page.context.browser is not None
    late_ctx = page.context.browser.new_context(
        viewport={"width": 1440, "height": 900}, base_url=relay.base_url
    )
    try:
        late = late_ctx.new_page()
        late.goto(f"/#session={sid}")
        late_view = wait_for(
            lambda: (t := timeline(late)) and len(t) == 3 and t[2]["failing"] and t,
            timeout_s=WAIT_S,
            what="the late joiner's timeline",
        )
        assert late_view == live_view
        assert late.text_content("#timeline .tl-head") == page.text_content("#timeline .tl-head")
        assert late.text_content("#timeline .tl-error") == note
    finally:
        late_ctx.close()


def test_progress_only_session_gets_an_inferred_timeline(page: Page, client: redis.Redis) -> None:
    w = BusWriter(client)
    r = Run(w, "quote-34", time.time() - 30)
    r.start(total=3)
    for n in (1, 2, 3):
        r.ev("progress", n * 2.0, step=n, total=3, message=f"Screen {n}")
    msg = "portal down"
    r.ev("failed", 7.0, message=msg, error=msg)
    page.goto("/#session=quote-34")
    rows = wait_for(
        lambda: (t := timeline(page)) and len(t) == 3 and t[2]["state"] == "failed" and t,
        timeout_s=WAIT_S,
        what="an inferred timeline",
    )
    assert [r["dur"] for r in rows] == ["2.0s", "2.0s", "1.0s"]
    assert [r["state"] for r in rows] == ["ok", "ok", "failed"]
    assert "portal down" in (page.text_content("#timeline .tl-error") or "")


def test_history_search_and_open(page: Page, relay: RelayThread, client: redis.Redis) -> None:
    w = BusWriter(client)
    now = time.time()
    failed = failing_run_with_retry(w, "claim-701", relay.base_url, now - 300)
    for i, sid in enumerate(["claim-702", "renewal-88"]):
        r = Run(w, sid, now - 200 + i * 10, job="claims")
        r.start(total=2)
        r.step(1, "Open claim", 0.1, 0.5)
        r.ev("finished", 1.0, step=2, total=2, message=f"done {sid}")
    page.goto("/")
    page.click('.tab[data-tab="history"]')
    wait_for(
        lambda: (
            page.eval_on_selector_all("#history tr", "rows => rows.map(r => r.dataset.sid)")
            == ["renewal-88", "claim-702", "claim-701"]
        ),
        timeout_s=WAIT_S,
        what="the newest sessions first",
    )
    assert page.is_hidden("#view-live")
    page.fill("#history-q", "claim")
    page.press("#history-q", "Enter")
    wait_for(
        lambda: (
            page.eval_on_selector_all("#history tr", "rows => rows.map(r => r.dataset.sid)")
            == ["claim-702", "claim-701"]
        ),
        timeout_s=WAIT_S,
        what="the search for 'claim'",
    )
    page.select_option("#history-status", "failed")
    wait_for(
        lambda: (
            page.eval_on_selector_all("#history tr", "rows => rows.map(r => r.dataset.sid)")
            == ["claim-701"]
        ),
        timeout_s=WAIT_S,
        what="only the failed one",
    )
    assert "HTTP 502" in (page.text_content('#history tr[data-sid="claim-701"]') or "")
    # Until a day two days ago (the browser's day, whatever its zone): none of today's.
    page.fill("#history-until", time.strftime("%Y-%m-%d", time.localtime(now - 2 * 86_400)))
    wait_for(lambda: page.is_visible("#history-empty"), timeout_s=WAIT_S, what="none until then")
    assert page.eval_on_selector_all("#history tr", "rows => rows.length") == 0
    page.fill("#history-until", time.strftime("%Y-%m-%d", time.localtime(now + 86_400)))
    wait_for(
        lambda: (
            page.eval_on_selector_all("#history tr", "rows => rows.map(r => r.dataset.sid)")
            == ["claim-701"]
        ),
        timeout_s=WAIT_S,
        what="until tomorrow: the failed one again",
    )
    page.fill("#history-q", "nothing-like-this")
    page.press("#history-q", "Enter")
    wait_for(lambda: page.is_visible("#history-empty"), timeout_s=WAIT_S, what="no match")

    page.fill("#history-q", "claim-701")
    page.press("#history-q", "Enter")
    page.click('#history tr[data-sid="claim-701"]', timeout=WAIT_S * 1000 * UNIT_S)
    wait_for(
        lambda: visible_log(page) == failed.ids and len(timeline(page)) == 3,
        timeout_s=WAIT_S,
        what="the opened session's log and timeline",
    )
    assert page.text_content("#log-title") == "claim-701"
    assert "claim-701" in page.url


def test_odd_and_hostile_events_render_safely(
    page: Page, client: redis.Redis, relay: RelayThread
) -> None:
    """Bad input on the page: a `javascript:` artifact URL, markup in names, a step end
    whose start was trimmed, a log line for a step never entered. Each is shown as text,
    placed where it can be, and breaks nothing."""
    w = BusWriter(client)
    r = Run(w, "quote-35", time.time() - 120)
    r.start(total=3)
    r.step(1, "Login", 0.1, 1.0)
    r.ev("step", 2.0, step=2, phase="start", attempt=1, message="<b>Driver</b> details")
    hostile = {"kind": "screenshot", "url": "javascript:alert(1)", "name": "<img src=x>"}
    r.ev("artifact", 2.5, step=2, artifact=hostile)
    r.ev("log", 2.6, step=7, total=9, level="error", message="<script>x()</script>")
    r.ev("step", 4.0, step=2, phase="end", attempt=1, outcome="ok", duration_s=2.0)
    r.ev("step", 6.0, step=3, phase="end", attempt=1, outcome="ok", duration_s=1.5)
    r.ev("finished", 6.1, step=3, total=3)
    page.goto("/#session=quote-35")
    wait_for(lambda: visible_log(page) == r.ids, timeout_s=WAIT_S, what="the log")
    rows = wait_for(
        lambda: (t := timeline(page)) and len(t) == 3 and t[2]["state"] == "ok" and t,
        timeout_s=WAIT_S,
        what="three steps",
    )
    assert rows[1]["name"] == "<b>Driver</b> details"  # text, not markup
    # Step 3's start is missing: its end places it (end - duration), 1.5 s long.
    assert rows[2]["dur"] == "1.5s"
    left = float(rows[2]["bars"][0][2].rstrip("%"))
    assert left == pytest.approx(100 * 4.5 / 6.1, abs=0.1)
    # The javascript: URL is no link anywhere; the markup in its name is text.
    assert page.eval_on_selector_all("a[href^='javascript']", "els => els.length") == 0
    assert page.eval_on_selector_all("#timeline img, #log img", "els => els.length") == 0
    chip = '.tl-row[data-step="2"] .art-chip.path'
    assert page.text_content(chip) == "<img src=x>"
    assert page.eval_on_selector_all("script:not([src])", "els => els.length") == 0
    assert "<script>x()</script>" in (page.text_content("#log") or "")


def test_history_and_jobs_use_the_token_in_the_page_url(
    redis_url: str, client: redis.Redis
) -> None:
    from relay import mint_token

    secret = "test-secret-0123456789abcdef0123456789"
    w = BusWriter(client)
    r = Run(w, "quote-auth-1", time.time() - 60)
    r.start(total=1)
    r.step(1, "Login", 0.1, 1.0)
    r.ev("finished", 1.2, step=1, total=1)
    relay = RelayThread(redis_url, secret=secret)
    relay.start()
    try:
        with chromium_page(relay.base_url) as (page, _):
            # No token: the search says why it failed.
            page.goto("/")
            page.click('.tab[data-tab="history"]')
            wait_for(
                lambda: "forbidden" in (page.text_content("#history-empty") or ""),
                timeout_s=WAIT_S,
                what="the refusal",
            )
            token = mint_token(secret, ["sessions", "session:*"], ttl_s=600)
            page.goto(f"/?token={token}")
            page.click('.tab[data-tab="history"]')
            wait_for(
                lambda: page.is_visible('#history tr[data-sid="quote-auth-1"]'),
                timeout_s=WAIT_S,
                what="the session, searched with the token",
            )
            page.click('#history tr[data-sid="quote-auth-1"]')
            wait_for(lambda: visible_log(page) == r.ids, timeout_s=WAIT_S, what="its log")
            # This relay has no archive: with the token, /v1/jobs answers 404: no tab.
            assert page.is_hidden('.tab[data-tab="jobs"]')
    finally:
        relay.stop()


def test_jobs_tab_is_hidden_where_the_relay_has_no_job_summaries(page: Page) -> None:
    # This relay runs without an archive: GET /v1/jobs answers 404, so no Jobs tab.
    page.goto("/")
    wait_for(lambda: page.evaluate("() => !!window.rpaDashboard"), timeout_s=WAIT_S, what="app")
    assert page.evaluate("async () => (await fetch('/v1/jobs')).status") == 404
    wait_for(
        lambda: page.evaluate("() => performance.getEntriesByName(new URL('v1/jobs', "
                              "location.href).href).length > 0"),
        timeout_s=WAIT_S,
        what="the page's own probe of /v1/jobs",
    )  # fmt: skip
    assert page.is_hidden('.tab[data-tab="jobs"]')


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def test_history_opens_a_session_gone_from_redis_and_jobs_show_summaries(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    """Runs archived by the real archiver; one run's keys then leave Redis (retention):
    the History tab finds it and shows its whole log and timeline from the archive, and
    the Jobs tab shows the job summaries the archive computes."""
    archive_url = f"sqlite://{tmp_path / 'archive.db'}"
    w = BusWriter(client)
    now = time.time()
    old = failing_run_with_retry(w, "quote-old-1", "http://127.0.0.1:9", now - 900)
    for i in range(2):
        r = Run(w, f"quote-ok-{i}", now - 600 + 100 * i)
        r.start(total=3)
        r.step(1, "Login", 0.1, 1.0 + i)
        r.step(2, "Driver details", 1.5 + i, 2.0)
        r.step(3, "Premium estimates", 4.0 + i, 6.0)
        r.ev("finished", 10.5 + i, step=3, total=3)
    other = Run(w, "claim-9", now - 300, job="claims-bot")
    other.start(total=1)
    other.step(1, "Open claim", 0.1, 0.5)
    other.ev("finished", 1.0, step=1, total=1)
    relay = RelayThread(redis_url, archive_url=archive_url)
    relay.start()
    try:
        jobs_url = f"{relay.base_url}/v1/jobs"
        with archiver(redis_url, archive_url, tmp_path):
            runs = wait_for(
                lambda: (
                    {j["job"]: j for j in _jobs(jobs_url)}
                    if {(j["job"], j["runs"]) for j in _jobs(jobs_url)}
                    == {("quote-robot", 3), ("claims-bot", 1)}
                    else None
                ),
                timeout_s=2 * WAIT_S,  # a fresh process: imports, schema, consumer group
                what="the four runs in the archive",
            )
        # The archiver is done (and stopped: one still tracking the stream would put its
        # consumer group, and so an empty stream, back). Long gone: retention removed the
        # session's keys, and its entries left the (capped) sessions index, so only the
        # archive knows it.
        keys = Keys()
        client.delete(keys.session("quote-old-1"), keys.meta("quote-old-1"))
        for entry_id, fields in client.xrange(keys.sessions):
            if decode(fields[b"e"]).get("session") == "quote-old-1":
                client.xdel(keys.sessions, entry_id)
        pages = f"{relay.base_url}/v1/streams/session:quote-old-1/events?limit=1000"
        wait_for(
            lambda: [e["id"] for e in get_json(pages)["events"]] == old.ids,
            timeout_s=WAIT_S,
            what="the gone session's history from the archive",
        )
        with chromium_page(relay.base_url) as (page, errors):
            _check_jobs_and_history(page, runs["quote-robot"], old)
            # Opening it wrote nothing into Redis (at most a relay's consumer group keeps an
            # empty stream under its name, which must not hide it): found again, from the
            # archive.
            assert client.exists(keys.meta("quote-old-1")) == 0
            assert client.xlen(keys.session("quote-old-1")) == 0
            page.click('#history-form button[type="submit"]')
            wait_for(
                lambda: page.is_visible('#history tr[data-sid="quote-old-1"]'),
                timeout_s=WAIT_S,
                what="the session found again",
            )
            network = ("Failed to load resource", "WebSocket connection to")
            assert [e for e in errors if not e.startswith(network)] == []
    finally:
        relay.stop()


def _jobs(url: str) -> list[dict[str, Any]]:
    try:
        jobs: list[dict[str, Any]] = get_json(url)["jobs"]
    except urllib.error.HTTPError:
        return []  # the archive's schema is not there yet
    return jobs


def _check_jobs_and_history(page: Page, summary: dict[str, Any], old: Run) -> None:
    page.goto("/")
    tab = '.tab[data-tab="jobs"]'
    wait_for(lambda: page.is_visible(tab), timeout_s=WAIT_S, what="the Jobs tab")
    page.click(tab)
    row = '#jobs tr[data-job="quote-robot"]'
    wait_for(lambda: page.is_visible(row), timeout_s=WAIT_S, what="quote-robot's summary")
    cells = page.eval_on_selector_all(f"{row} td", "tds => tds.map(td => td.textContent)")
    assert cells[0] == "quote-robot"
    assert cells[1] == str(summary["runs_today"])
    assert cells[2] == "66.7%"  # 2 of 3 finished
    assert cells[3] != "—"
    assert cells[4] != "—"
    slow = summary["slowest_step"]
    assert slow is not None
    assert cells[5].startswith(f"{slow['step']} · {slow['name']}")
    wait_for(
        lambda: page.is_visible('#jobs tr[data-job="claims-bot"]'),
        timeout_s=WAIT_S,
        what="the other job",
    )
    # A job's row shows its runs in the Sessions tab.
    page.click(row)
    assert page.is_visible("#view-live")
    assert page.input_value("#filter") == "quote-robot"
    shown = "rows => rows.map(r => r.dataset.sid).sort()"
    wait_for(
        lambda: page.eval_on_selector_all("#sessions tr", shown) == ["quote-ok-0", "quote-ok-1"],
        timeout_s=WAIT_S,
        what="quote-robot's runs only",
    )

    page.click('.tab[data-tab="history"]')
    page.fill("#history-q", "quote-old")
    hit = '#history tr[data-sid="quote-old-1"]'
    page.click('#history-form button[type="submit"]')
    wait_for(lambda: page.is_visible(hit), timeout_s=WAIT_S, what="the archived session found")
    assert page.get_attribute(hit, "data-status") == "failed"
    page.click(hit)
    wait_for(lambda: visible_log(page) == old.ids, timeout_s=WAIT_S, what="its whole log")
    rows = wait_for(
        lambda: (t := timeline(page)) and len(t) == 3 and t[2]["failing"] and t,
        timeout_s=WAIT_S,
        what="its timeline",
    )
    assert [b[0] for b in rows[1]["bars"]] == ["retried", "ok"]
    assert "HTTP 502" in (page.text_content("#timeline .tl-error") or "")
    wait_for(
        lambda: "whole history" in (page.text_content("#log-sub") or ""),
        timeout_s=WAIT_S,
        what="the header to say the history is complete",
    )
    assert page.get_attribute("#log-status", "data-status") == "failed"
    # The log follows its tail, also after the timeline above it grew.
    at_tail = """() => { const w = document.querySelector('#log-wrap');
        const below = w.scrollHeight - w.scrollTop - w.clientHeight;
        return w.scrollHeight > w.clientHeight && below < 2; }"""
    wait_for(lambda: page.evaluate(at_tail), timeout_s=WAIT_S, what="the log at its tail")
