"""A browser robot that reports through rpa-bus: the reference producer.

It opens a motor-insurance quote site in Chromium (Playwright, sync API), fills its 15
screens, and tells the bus what it is doing, so anyone watching sees it live:

- ``started`` when the session opens, as a run of the job ``quote-robot`` (runs of one
  job are comparable: their step times teach the ETA), with the robot's inputs as meta;
- one step per screen (``with s.step(n, "Screen n: ...")``): its start, and its end with
  how long the screen took and how it went (``ok``, or ``failed`` with the site's error);
- the screenshot of each screen as an artifact: a reference, never the image; its URL
  when the site serves the screenshots folder (the local site does, under ``/shots/``),
  else its path;
- log lines by level: ``debug`` (what was typed), ``info`` (estimates, the quote),
  ``warning`` (a slow calculation), ``error`` (the site's failure);
- ``estimates``, the premiums it reads on screen 5, as an event of their own;
- ``finished`` with the quote, or ``failed`` with the site's own error message.

Run it (from the repository root; a Redis must be reachable, e.g. ``rpa-bus up``)::

    python examples/rpa_quote.py                  # one robot against a local copy of the site
    python examples/rpa_quote.py --robots 4       # four robots at once
    python examples/rpa_quote.py --fail           # plate FAIL000: the site breaks at screen 9
    python examples/rpa_quote.py --site-url http://127.0.0.1:8080 --redis-url redis://host:6379/0

and watch with ``rpa-bus tail session:SID`` or a relay's dashboard. The browser is Debian's
Chromium (``apt-get install chromium``); Playwright is only the driver and never downloads
one (``pip install playwright``, no ``playwright install``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from quote_site import FAILING_PLATE, TOTAL_SCREENS, start_site

from producer import Producer, Session

log = logging.getLogger("rpa_quote")

JOB = "quote-robot"  # the job every run of this robot belongs to
SLOW_ESTIMATES_S = 5.0  # a screen-5 calculation slower than this is logged as a warning

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ACTION_TIMEOUT_MS = 15_000  # one click, fill or page load
ESTIMATES_TIMEOUT_MS = 60_000  # the insurer's calculation on screen 5


def chromium_path() -> str | None:
    """Debian's Chromium (or ``RPA_BUS_CHROMIUM``), or None when it is not installed."""
    for candidate in (os.environ.get("RPA_BUS_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    """What the robot types into the site: one customer and one car."""

    broker_code: str = "BRK-0042"
    password: str = "demo"
    full_name: str = "Ana Souza"
    birth_date: str = "1986-04-12"
    email: str = "ana.souza@example.com"
    licence_number: str = "04512398761"
    licence_years: int = 15
    plate: str = "BRA2E19"
    make_model: str = "Chevrolet Onix 1.0"
    year: int = 2022
    use: str = "private"
    postcode: str = "01310-100"
    street: str = "Avenida Paulista"
    number: str = "1578"
    payment: str = "card"
    instalments: int = 10

    @classmethod
    def sample(cls, n: int) -> QuoteRequest:
        """The n-th of a few different customers, so a fleet of robots does not look alike."""
        people = [
            cls(),
            cls(
                full_name="Bruno Lima",
                birth_date="1992-09-30",
                email="bruno.lima@example.com",
                licence_years=8,
                plate="RIO4F22",
                make_model="Hyundai HB20 1.6",
                year=2021,
                payment="bank_slip",
                instalments=4,
            ),
            cls(
                full_name="Carla Mendes",
                birth_date="1975-01-05",
                email="carla@example.com",
                licence_years=30,
                plate="SPX9J71",
                make_model="Toyota Corolla 2.0",
                year=2023,
                use="ride-hailing",
                instalments=12,
            ),
            cls(
                full_name="Diego Rocha",
                birth_date="2001-06-18",
                email="diego.rocha@example.com",
                licence_years=3,
                plate="MGA1B08",
                make_model="Renault Kwid 1.0",
                year=2020,
                payment="debit",
                instalments=1,
            ),
        ]
        return people[(n - 1) % len(people)]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one robot's quote ended."""

    session: str
    status: str  # "finished" or "failed"
    quote: dict[str, Any] | None = None
    error: str | None = None


class SiteError(Exception):
    """The site refused the robot's input or broke; the message is the site's own words."""


class RobotStopped(Exception):
    """The robot was told to stop (Ctrl-C) between two screens."""


class QuoteRobot:
    """One quote, one browser page: walks the screens and reports each one to the bus."""

    def __init__(
        self,
        page: Page,
        session: Session,
        *,
        shots: Path,
        shots_url: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.page = page
        self.session = session
        self.shots = shots
        self.shots_url = shots_url  # where ``shots`` is served, if it is
        self.stop = stop

    def run(self, site_url: str, req: QuoteRequest) -> dict[str, Any]:
        """Fill all 15 screens; return the quote shown on the last one."""
        page = self.page
        page.goto(site_url)
        page.click("#start")

        with self.screen(1, f"Screen 1: logged in to the broker portal as {req.broker_code}"):
            page.fill("#broker_code", req.broker_code)
            page.fill("#password", req.password)

        with self.screen(2, f"Screen 2: policyholder {req.full_name}"):
            page.fill("#full_name", req.full_name)
            page.fill("#birth_date", req.birth_date)
            page.fill("#email", req.email)

        with self.screen(3, f"Screen 3: main driver, licensed for {req.licence_years} years"):
            page.select_option("#main_driver", "policyholder")
            page.fill("#licence_number", req.licence_number)
            page.fill("#licence_years", str(req.licence_years))

        with self.screen(4, f"Screen 4: vehicle {req.plate}, {req.make_model} {req.year}"):
            page.fill("#plate", req.plate)
            page.fill("#make_model", req.make_model)
            page.fill("#year", str(req.year))
            page.select_option("#use", req.use)

        # Screen 5 "calculates" for a while; the estimates are news in their own right.
        with self.screen(5, "Screen 5: premium estimates", wait=False):
            started = time.monotonic()
            plans = self.read_estimates()
            took_s = time.monotonic() - started
            if took_s > SLOW_ESTIMATES_S:
                self.session.log(f"the insurer took {took_s:.1f} s to calculate", level="warning")
            self.session.emit("estimates", {"plans": plans})
            best = plans[0]  # the site lists them cheapest first
            chosen = f"{best['insurer']} at {best['premium']:.2f} a year"
            self.session.log(f"{len(plans)} estimates, chose {chosen}", level="info")
            page.check(f"input[name=plan][value={best['plan']}]")

        with self.screen(6, "Screen 6: coverages: third-party liability, theft, glass"):
            page.check("#third_party")
            page.check("#theft")
            page.check("#glass")

        with self.screen(7, "Screen 7: roadside assistance plus, towing 200 km"):
            page.select_option("#assistance", "plus")
            page.select_option("#towing_km", "200")

        with self.screen(8, "Screen 8: standard deductible"):
            page.select_option("#deductible", "standard")

        with self.screen(9, "Screen 9: risk questionnaire answered"):
            page.select_option("#garage", "home")
            page.fill("#commute_km", "18")
            page.select_option("#young_drivers", "no")

        with self.screen(10, f"Screen 10: overnight address {req.postcode}"):
            page.fill("#postcode", req.postcode)
            page.fill("#street", req.street)
            page.fill("#number", req.number)

        with self.screen(11, f"Screen 11: pays by {req.payment} in {req.instalments}x"):
            page.select_option("#method", req.payment)
            page.fill("#instalments", str(req.instalments))

        with self.screen(12, "Screen 12: details reviewed"):
            page.check("#confirm")

        with self.screen(13, "Screen 13: terms accepted"):
            page.check("#accept_terms")

        with self.screen(14, "Screen 14: proposal issued") as data:
            data["proposal"] = page.inner_text("#proposal")

        with self.screen(15, "Screen 15: quote", submit=False):
            quote = self.read_quote()
            self.session.log(
                f"quote {quote['quote_number']}: {quote['premium']:.2f} a year", level="info"
            )
        return quote

    @contextmanager
    def screen(
        self, step: int, message: str, *, wait: bool = True, submit: bool = True
    ) -> Iterator[dict[str, Any]]:
        """One screen as one step: wait for it, fill it (the block), screenshot, submit.

        The block may add to the yielded dict; it goes in a ``debug`` log line. An
        exception (the site's refusal, a browser timeout) ends the step ``failed``.
        """
        if self.stop is not None and self.stop.is_set():
            raise RobotStopped(f"stopped before screen {step}")
        with self.session.step(step, message):
            if wait:
                self.page.wait_for_selector(f"main[data-screen='{step}']")
            data: dict[str, Any] = {}
            yield data
            self.session.log(f"screen {step} filled", data=data or None, level="debug")
            self.screenshot(step)
            if submit:
                self.submit(step)

    def screenshot(self, step: int) -> str:
        """Save the screen as a PNG and record it on the bus: its URL where the folder is
        served, else its path (never the image itself)."""
        path = self.shots / f"screen-{step:02d}.png"
        self.page.screenshot(path=path)
        ref = f"{self.shots_url}/{self.session.sid}/{path.name}" if self.shots_url else str(path)
        self.session.artifact("screenshot", ref, name=f"Screen {step}", mime="image/png")
        return ref

    def submit(self, step: int) -> None:
        """Submit the screen's form; raise ``SiteError`` with the site's words if it says no."""
        with self.page.expect_response(lambda r: r.request.method == "POST") as answer:
            self.page.click("#next")
        status = answer.value.status
        if status >= 500:
            error = self.page.inner_text("#error")
            self.session.log(f"the site answered HTTP {status}: {error}", level="error")
            raise SiteError(f"screen {step}: the site failed with HTTP {status}: {error}")
        if status >= 400:
            self.page.wait_for_selector("#errors")  # the page with the errors, once loaded
            errors = "; ".join(self.page.locator("#errors li").all_inner_texts())
            raise SiteError(f"screen {step}: the site refused the input: {errors}")

    def read_estimates(self) -> list[dict[str, Any]]:
        # The page refreshes itself until the table is there; waiting outlives the reloads.
        self.page.wait_for_selector("#estimates", timeout=ESTIMATES_TIMEOUT_MS)
        rows = self.page.locator("#estimates tr[data-plan]")
        return [
            {
                "plan": row.get_attribute("data-plan"),
                "insurer": row.locator(".insurer").inner_text(),
                "premium": float(row.locator(".premium").inner_text()),
            }
            for row in rows.all()
        ]

    def read_quote(self) -> dict[str, Any]:
        self.page.wait_for_selector(f"main[data-screen='{TOTAL_SCREENS}']")

        def text(field: str) -> str:
            return self.page.inner_text(f"#{field}")

        return {
            "quote_number": text("quote-number"),
            "insurer": text("insurer"),
            "vehicle": text("vehicle"),
            "premium": float(text("premium")),
            "payment": text("payment"),
            "deductible": text("deductible"),
        }


def run_quote(
    bus: Producer,
    browser: Browser,
    *,
    site_url: str,
    sid: str,
    request: QuoteRequest,
    screenshots: Path,
    shots_url: str | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """One robot, one quote, one session on the bus; returns how it ended. ``shots_url``:
    where ``screenshots`` is served (screenshots are then referenced by URL)."""
    shots = screenshots / sid
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    meta = {"robot": "rpa_quote", "site": site_url, "screenshots": str(shots), **asdict(request)}
    del meta["password"]
    try:
        with bus.session(sid, job=JOB, total=TOTAL_SCREENS, meta=meta) as s:
            robot = QuoteRobot(context.new_page(), s, shots=shots, shots_url=shots_url, stop=stop)
            try:
                quote = robot.run(site_url, request)
            except SiteError as exc:
                s.fail(str(exc))  # the site's own words, for the people watching
                return Outcome(sid, "failed", error=str(exc))
            s.finish(quote)
            return Outcome(sid, "finished", quote=quote)
    # Below, the exception has left the session block, so the producer has emitted `failed`
    # with it. A browser timeout or a stop ends this robot's quote, not the whole fleet.
    except PlaywrightError as exc:
        log.warning("%s: the browser gave up: %s", sid, exc)
        return Outcome(sid, "failed", error=f"{type(exc).__name__}: {exc}")
    except RobotStopped as exc:
        return Outcome(sid, "failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        context.close()


def run_robots(
    bus: Producer,
    *,
    site_url: str,
    jobs: Iterable[tuple[str, QuoteRequest]],
    robots: int = 1,
    screenshots: Path,
    browser_path: str,
    shots_url: str | None = None,
    stop: threading.Event | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run the (session id, request) jobs on ``robots`` threads at once; return the outcomes.

    Playwright's sync objects belong to the thread that made them, so each robot thread
    runs its own Playwright and Chromium, and each quote gets a fresh browser context
    (no cookies shared between quotes). ``jobs`` may be endless; set ``stop`` to end.
    """
    stop = stop or threading.Event()
    pending = iter(jobs)
    lock = threading.Lock()

    def next_job() -> tuple[str, QuoteRequest] | None:
        with lock:
            return None if stop.is_set() else next(pending, None)

    def robot_thread() -> list[Outcome]:
        outcomes = []
        with sync_playwright() as pw:
            # handle_sigint=False: on Ctrl-C the browser stays up, so each robot can stop
            # at its next screen and say so on the bus, instead of dying mid-click.
            browser = pw.chromium.launch(
                executable_path=browser_path, args=CHROMIUM_ARGS, handle_sigint=False
            )
            try:
                while (job := next_job()) is not None:
                    sid, request = job
                    outcome = run_quote(
                        bus,
                        browser,
                        site_url=site_url,
                        sid=sid,
                        request=request,
                        screenshots=screenshots,
                        shots_url=shots_url,
                        stop=stop,
                    )
                    outcomes.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)
            finally:
                browser.close()
        return outcomes

    with ThreadPoolExecutor(robots, thread_name_prefix="robot") as pool:
        futures = [pool.submit(robot_thread) for _ in range(robots)]
        try:
            return [outcome for future in futures for outcome in future.result()]
        except BaseException:
            stop.set()  # Ctrl-C or a bug: the other robots stop at their next screen
            raise


def session_ids(prefix: str, count: int | None) -> Iterator[str]:
    """``PREFIX-YYYYmmdd-HHMMSS-N`` for N = 1.. (endless when count is None)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 0
    while count is None or n < count:
        n += 1
        yield f"{prefix}-{stamp}-{n}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rpa_quote.py", description="A browser robot that fills a 15-screen quote."
    )
    parser.add_argument("--redis-url", help="default: RPA_BUS_REDIS_URL, else localhost")
    parser.add_argument("--site-url", help="default: start the local quote site")
    parser.add_argument("--robots", type=int, default=1, help="robots at once (default 1)")
    parser.add_argument("--count", type=int, help="quotes in all (default: one per robot)")
    parser.add_argument("--plate", help="the vehicle plate to quote")
    parser.add_argument("--fail", action="store_true", help=f"use plate {FAILING_PLATE}")
    parser.add_argument("--screenshots", type=Path, help="folder for screenshots")
    parser.add_argument("--session-prefix", default="quote", help="session ids start with it")
    args = parser.parse_args(argv)
    if args.robots < 1 or (args.count is not None and args.count < 1):
        parser.error("--robots and --count must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    browser_path = chromium_path()
    if browser_path is None:
        print("Chromium not found: apt-get install -y chromium chromium-driver", file=sys.stderr)
        return 2
    plate = FAILING_PLATE if args.fail else args.plate
    jobs = [
        (sid, replace(QuoteRequest.sample(n), plate=plate) if plate else QuoteRequest.sample(n))
        for n, sid in enumerate(session_ids(args.session_prefix, args.count or args.robots), 1)
    ]
    screenshots = args.screenshots or Path(tempfile.gettempdir()) / "rpa-quote-screens"
    # The local site also serves the screenshots: the bus carries their URLs.
    site = None if args.site_url else start_site(shots_dir=screenshots)
    site_url = site.url if site is not None else args.site_url
    # Settings from RPA_BUS_* variables (Redis URL, prefix, spool folder); --redis-url wins.
    bus = Producer.from_env(**({"redis_url": args.redis_url} if args.redis_url else {}))
    print(f"{len(jobs)} quote(s), {args.robots} robot(s), site {site_url}, shots in {screenshots}")
    try:
        outcomes = run_robots(
            bus,
            site_url=site_url,
            jobs=jobs,
            robots=args.robots,
            screenshots=screenshots,
            browser_path=browser_path,
            shots_url=f"{site_url}/shots" if site is not None else None,
            on_outcome=lambda o: print(f"{o.session}: {o.status} {o.quote or o.error}"),
        )
    except KeyboardInterrupt:
        return 130
    finally:
        if site is not None:
            site.stop()
        # Events are written in the background; wait for them (bounded) before exiting.
        if not bus.flush(timeout_s=10.0):
            print("some events are not in Redis yet: they are journaled and sent next run")
        bus.close()
    return 0 if all(o.status == "finished" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
