"""The quote site's HTTP side: a threaded ``http.server`` serving the screens as HTML forms.

URLs: ``GET /`` start page; ``POST /quotes`` opens a quote and redirects to its screen 1;
``GET /q/ID/N`` shows screen N; ``POST /q/ID/N`` submits it (303 to the next screen, 400
with the errors, or 500 when the site breaks); ``GET /shots/SID/NAME.png`` serves a robot's
screenshot from the folder given as ``shots_dir`` (so the bus carries only its URL, and a
dashboard shows it as a thumbnail). Pages carry ``data-screen`` on ``<main>`` so
a robot can check where it is. No JavaScript: screen 5 "calculates" behind a page that
refreshes itself until the estimates are ready.
"""

from __future__ import annotations

import html
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl

from . import screens as sc

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass
class Quote:
    """One quote in progress: the answers so far and the next screen to fill."""

    id: str
    answers: dict[str, str] = field(default_factory=dict)
    reached: int = 1  # the highest screen that may be shown
    estimates_ready_at: float = 0.0  # monotonic time the screen 5 calculation completes


class QuoteSite:
    """The site's state and pages, independent of the HTTP plumbing."""

    def __init__(
        self, *, estimate_delay_s: float, latency_s: float, shots_dir: Path | None = None
    ) -> None:
        self.shots_dir = shots_dir
        self.estimate_delay_s = estimate_delay_s
        self.latency_s = latency_s
        self._quotes: dict[str, Quote] = {}
        self._lock = threading.Lock()  # handlers run on one thread per request
        self._ids = itertools.count(1001)

    def open_quote(self) -> Quote:
        with self._lock:
            quote = Quote(f"Q{next(self._ids)}")
            self._quotes[quote.id] = quote
        return quote

    def quote(self, quote_id: str) -> Quote | None:
        with self._lock:
            return self._quotes.get(quote_id)

    def submit(self, quote: Quote, number: int, values: dict[str, str]) -> list[str]:
        """Apply a submission of screen ``number``; return the errors (none: accepted).

        Raises ``ServerFailure`` when the site breaks.
        """
        scr = sc.screen(number)
        plans = tuple(str(p["plan"]) for p in sc.estimates(quote.answers))
        errors = sc.validate(scr, values, quote.answers, plans)
        if errors:
            return errors
        with self._lock:
            quote.answers.update({f.name: values.get(f.name, "").strip() for f in scr.fields})
            if number == sc.RISK_SCREEN:
                sc.check_risk(quote.answers)
            if number == sc.ESTIMATES_SCREEN - 1:
                quote.estimates_ready_at = time.monotonic() + self.estimate_delay_s
            quote.reached = max(quote.reached, number + 1)
        return []


# Rendering. Small and explicit on purpose: this is a fixture for robots, not a web app.

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;color:#1d2733}
header{color:#51606f;font-size:.9rem} label{display:block;margin:.6rem 0 .2rem}
input,select{font-size:1rem;padding:.3rem} button{margin-top:1rem;font-size:1rem;padding:.4rem 1rem}
.errors{color:#a4161a} table{border-collapse:collapse} td,th{padding:.3rem .8rem;text-align:left}
dt{font-weight:600;margin-top:.5rem}
"""


def _page(title: str, body: str, *, screen: int = 0, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{refresh}"
        f"<title>{html.escape(title)} · Quote portal</title><style>{_STYLE}</style></head>"
        f"<body><header>Motor insurance quote portal</header>"
        f"<main data-screen='{screen}'><h1 id='title'>{html.escape(title)}</h1>{body}</main>"
        "</body></html>"
    )


def _field_html(f: sc.Field, value: str, plans: list[dict[str, str | float]]) -> str:
    name = html.escape(f.name)
    label = html.escape(f.label)
    if f.kind == "checkbox":
        checked = " checked" if value == "on" else ""
        return f"<label><input type='checkbox' id='{name}' name='{name}'{checked}> {label}</label>"
    if f.kind == "select":
        opts = "".join(
            f"<option{' selected' if o == value else ''}>{html.escape(o)}</option>"
            for o in ("", *f.options)
        )
        return (
            f"<label for='{name}'>{label}</label><select id='{name}' name='{name}'>{opts}</select>"
        )
    if f.kind == "radio":
        rows = "".join(
            f"<tr data-plan='{html.escape(str(p['plan']))}'>"
            f"<td><input type='radio' name='{name}' value='{html.escape(str(p['plan']))}'></td>"
            f"<td class='insurer'>{html.escape(str(p['insurer']))}</td>"
            f"<td class='premium'>{float(p['premium']):.2f}</td></tr>"
            for p in plans
        )
        return (
            "<table id='estimates'><tr><th></th><th>Insurer</th><th>Annual premium</th></tr>"
            f"{rows}</table>"
        )
    kind = f.kind if f.kind != "number" else "text"  # validated server-side, not by the browser
    return (
        f"<label for='{name}'>{label}</label>"
        f"<input type='{kind}' id='{name}' name='{name}' value='{html.escape(value)}'>"
    )


def render_screen(
    quote: Quote, number: int, errors: list[str], submitted: dict[str, str] | None = None
) -> str:
    """Screen ``number`` of ``quote``; after a refused submission, with its errors and values."""
    scr = sc.screen(number)
    title = f"Screen {number} of {sc.TOTAL_SCREENS}: {scr.title}"
    answers = quote.answers
    if number == sc.ESTIMATES_SCREEN and time.monotonic() < quote.estimates_ready_at:
        body = "<p id='calculating'>Calculating premium estimates with 4 insurers…</p>"
        return _page(title, body, screen=number, refresh_s=1)
    if number == sc.TOTAL_SCREENS:
        return _page(title, _quote_html(quote), screen=number)
    plans = sc.estimates(answers) if number == sc.ESTIMATES_SCREEN else []
    parts = []
    if errors:
        items = "".join(f"<li>{html.escape(e)}</li>" for e in errors)
        parts.append(f"<ul class='errors' id='errors'>{items}</ul>")
    if number == 12:
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in answers.items()
            if k != "password"
        )
        parts.append(f"<table id='summary'>{rows}</table>")
    if number == 14:
        parts.append(
            f"<p>Proposal <strong id='proposal'>P-{quote.id[1:]}</strong> is ready: "
            f"annual premium <strong id='proposal-premium'>{sc.final_premium(answers):.2f}</strong>"
            "</p>"
        )
    shown = {**answers, **(submitted or {})}
    fields = "".join(_field_html(f, shown.get(f.name, ""), plans) for f in scr.fields)
    parts.append(
        f"<form method='post' action='/q/{quote.id}/{number}'>{fields}"
        f"<button type='submit' id='next'>{html.escape(scr.button)}</button></form>"
    )
    return _page(title, "".join(parts), screen=number)


def _quote_html(quote: Quote) -> str:
    a = quote.answers
    plan = next(p for p in sc.estimates(a) if p["plan"] == a["plan"])
    premium = sc.final_premium(a)
    instalments = int(a["instalments"])
    items = [
        ("Quote number", "quote-number", quote.id),
        ("Insurer", "insurer", str(plan["insurer"])),
        ("Vehicle", "vehicle", f"{a['make_model']} {a['year']} ({a['plate']})"),
        ("Annual premium", "premium", f"{premium:.2f}"),
        ("Payment", "payment", f"{instalments} x {premium / instalments:.2f} by {a['method']}"),
        ("Deductible", "deductible", a["deductible"]),
    ]
    rows = "".join(
        f"<dt>{html.escape(t)}</dt><dd id='{i}'>{html.escape(v)}</dd>" for t, i, v in items
    )
    return f"<dl id='quote'>{rows}</dl>"


def _error_page(status: HTTPStatus, message: str) -> str:
    body = f"<p id='error'>{html.escape(message)}</p>"
    return _page(f"Error {status.value}: {status.phrase}", body)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: HTTPStatus, page: str = "", *, location: str | None = None) -> None:
        body = page.encode()
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _shot(self) -> bool:
        """Serve ``/shots/SID/NAME.png`` from the site's screenshot folder; True if handled."""
        path = self.path.split("?", 1)[0]
        if not path.startswith("/shots/"):
            return False
        folder = self.server.site.shots_dir
        parts = path[len("/shots/") :].split("/")
        # Two plain names, no dots-only parts: nothing outside the folder can be named.
        ok = (
            folder is not None
            and len(parts) == 2
            and all(_SAFE_NAME.fullmatch(p) and p.strip(".") for p in parts)
            and parts[1].endswith(".png")
        )
        file = folder / parts[0] / parts[1] if ok and folder is not None else None
        try:
            body = file.read_bytes() if file is not None else None
        except OSError:
            body = None
        if body is None:
            self._send(HTTPStatus.NOT_FOUND, _error_page(HTTPStatus.NOT_FOUND, "No such image"))
            return True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600")
        self.end_headers()
        self.wfile.write(body)
        return True

    def _route(self) -> tuple[Quote, int] | None:
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) == 3 and parts[0] == "q" and parts[2].isdigit():
            quote = self.server.site.quote(parts[1])
            number = int(parts[2])
            if quote and 1 <= number <= sc.TOTAL_SCREENS:
                return quote, number
        return None

    def do_GET(self) -> None:
        site = self.server.site
        time.sleep(site.latency_s)
        if self.path in ("/", "/index.html"):
            body = (
                "<form method='post' action='/quotes'>"
                "<button id='start'>Start a new quote</button></form>"
            )
            self._send(HTTPStatus.OK, _page("Motor insurance quote", body))
            return
        if self._shot():
            return
        route = self._route()
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, _error_page(HTTPStatus.NOT_FOUND, "No such page"))
            return
        quote, number = route
        if number > quote.reached:  # no skipping ahead: back to the screen still to fill
            self._send(HTTPStatus.SEE_OTHER, location=f"/q/{quote.id}/{quote.reached}")
            return
        self._send(HTTPStatus.OK, render_screen(quote, number, []))

    def do_POST(self) -> None:
        site = self.server.site
        time.sleep(site.latency_s)
        length = int(self.headers.get("Content-Length") or 0)
        values = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
        if self.path == "/quotes":
            quote = site.open_quote()
            self._send(HTTPStatus.SEE_OTHER, location=f"/q/{quote.id}/1")
            return
        route = self._route()
        if route is None or route[1] > route[0].reached or route[1] == sc.TOTAL_SCREENS:
            self._send(HTTPStatus.NOT_FOUND, _error_page(HTTPStatus.NOT_FOUND, "No such form"))
            return
        quote, number = route
        try:
            errors = site.submit(quote, number, values)
        except sc.ServerFailure as exc:
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            self._send(status, _error_page(status, str(exc)))
            return
        if errors:
            self._send(HTTPStatus.BAD_REQUEST, render_screen(quote, number, errors, values))
            return
        self._send(HTTPStatus.SEE_OTHER, location=f"/q/{quote.id}/{number + 1}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], site: QuoteSite) -> None:
        super().__init__(address, _Handler)
        self.site = site


class RunningSite(NamedTuple):
    """A started site: its base URL and a function that stops it (idempotent)."""

    url: str
    stop: Callable[[], None]


def start_site(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    estimate_delay_s: float = 2.0,
    latency_s: float = 0.0,
    shots_dir: Path | None = None,
) -> RunningSite:
    """Serve the quote site on a background thread; ``port=0`` picks a free port.

    ``estimate_delay_s`` is how long screen 5 "calculates"; ``latency_s`` is added to every
    response, to play a slow insurer. ``shots_dir``: robots' screenshots, served under
    ``/shots/``.
    """
    site = QuoteSite(estimate_delay_s=estimate_delay_s, latency_s=latency_s, shots_dir=shots_dir)
    server = _Server((host, port), site)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="quote-site", daemon=True
    )
    thread.start()
    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    bound_host, bound_port = server.server_address[:2]
    return RunningSite(f"http://{bound_host!s}:{bound_port}", stop)
