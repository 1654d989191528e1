"""The example quote site on its own (plain HTTP, no browser): validation, order, failure."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from rpa_bus.cli._real import load_examples


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Browser:
    """Just enough of a browser: GET and POST, redirects returned rather than followed."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.opener = urllib.request.build_opener(_NoRedirects)

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Returns (status, Location header, body)."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        try:
            with self.opener.open(self.base_url + path, data, timeout=5) as resp:
                return resp.status, resp.headers.get("Location") or "", resp.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers.get("Location") or "", exc.read().decode()


@pytest.fixture(scope="module")
def quote_site() -> ModuleType:
    return load_examples()[1]


@pytest.fixture
def browser(quote_site: ModuleType) -> Iterator[Browser]:
    site = quote_site.start_site(estimate_delay_s=0.0)
    try:
        yield Browser(site.url)
    finally:
        site.stop()


# What a valid run types into screens 1-4 and 6-13 (screen 5 picks a plan).
ANSWERS: dict[int, dict[str, str]] = {
    1: {"broker_code": "BRK-0042", "password": "demo"},
    2: {"full_name": "Ana Souza", "birth_date": "1986-04-12", "email": "ana@example.com"},
    3: {"main_driver": "policyholder", "licence_number": "04512398761", "licence_years": "15"},
    4: {"plate": "BRA2E19", "make_model": "Onix 1.0", "year": "2022", "use": "private"},
    6: {"third_party": "on"},
    7: {"assistance": "plus", "towing_km": "200"},
    8: {"deductible": "standard"},
    9: {"garage": "home", "commute_km": "18", "young_drivers": "no"},
    10: {"postcode": "01310-100", "street": "Avenida Paulista", "number": "1578"},
    11: {"method": "card", "instalments": "10"},
    12: {"confirm": "on"},
    13: {"accept_terms": "on"},
    14: {},
}


def open_quote(browser: Browser) -> str:
    status, location, _ = browser.request("/quotes", {})
    assert status == 303
    assert location.endswith("/1")
    return location.rsplit("/", 1)[0]  # /q/ID


def test_a_valid_quote_walks_all_15_screens(browser: Browser) -> None:
    base = open_quote(browser)
    for number in range(1, 15):
        form = ANSWERS.get(number) or {"plan": "atlas"}
        status, location, body = browser.request(f"{base}/{number}", form)
        assert (status, location) == (303, f"{base}/{number + 1}"), body
    status, _, body = browser.request(f"{base}/15")
    assert status == 200
    assert "id='quote-number'" in body
    assert "data-screen='15'" in body


def test_each_field_is_validated_server_side(browser: Browser) -> None:
    base = open_quote(browser)
    status, _, body = browser.request(f"{base}/1", {"broker_code": "42", "password": ""})
    assert status == 400
    assert "broker_code: &#x27;42&#x27; is not valid (BRK- and 4 digits)" in body
    assert "password: required" in body
    assert "value='42'" in body  # the refused value is shown again for correction
    browser.request(f"{base}/1", ANSWERS[1])
    too_young = {**ANSWERS[2], "birth_date": "2015-01-01"}
    status, _, body = browser.request(f"{base}/2", too_young)
    assert status == 400
    assert "must be 18 to 100 years old" in body


def test_screens_cannot_be_skipped(browser: Browser) -> None:
    base = open_quote(browser)
    assert browser.request(f"{base}/7")[:2] == (303, f"{base}/1")
    assert browser.request(f"{base}/7", ANSWERS[7])[0] == 404
    assert browser.request("/q/NOPE/1")[0] == 404


def test_estimates_take_a_while(quote_site: ModuleType) -> None:
    site = quote_site.start_site(estimate_delay_s=30.0)
    try:
        browser = Browser(site.url)
        base = open_quote(browser)
        for number in range(1, 5):
            browser.request(f"{base}/{number}", ANSWERS[number])
        status, _, body = browser.request(f"{base}/5")
        assert status == 200
        assert "id='calculating'" in body
        assert 'http-equiv="refresh"' in body
        assert "id='estimates'" not in body
    finally:
        site.stop()


def test_the_failing_plate_breaks_the_site_at_screen_9(
    browser: Browser, quote_site: ModuleType
) -> None:
    base = open_quote(browser)
    plate = quote_site.FAILING_PLATE
    for number in range(1, 9):
        form = ANSWERS.get(number) or {"plan": "atlas"}
        if number == 4:
            form = {**form, "plate": plate}
        assert browser.request(f"{base}/{number}", form)[0] == 303
    status, _, body = browser.request(f"{base}/9", ANSWERS[9])
    assert status == 500
    assert f"Rating engine error E-RISK-500: vehicle {plate} could not be rated" in body
    assert "id='error'" in body


def test_screenshots_are_served_from_the_shots_folder_and_nothing_else(
    quote_site: ModuleType, tmp_path: Path
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 32
    (tmp_path / "shots" / "quote-1").mkdir(parents=True)
    (tmp_path / "shots" / "quote-1" / "screen-01.png").write_bytes(png)
    (tmp_path / "secret.png").write_bytes(png)
    (tmp_path / "shots" / "quote-1" / "notes.txt").write_text("no")
    site = quote_site.start_site(estimate_delay_s=0.0, shots_dir=tmp_path / "shots")
    try:
        with urllib.request.urlopen(site.url + "/shots/quote-1/screen-01.png", timeout=5) as r:
            assert r.headers["Content-Type"] == "image/png"
            assert r.read() == png
        b = Browser(site.url)
        for path in (
            "/shots/quote-1/missing.png",
            "/shots/../secret.png",
            "/shots/quote-1/..%2F..%2Fsecret.png",
            "/shots/quote-1/notes.txt",
            "/shots/screen-01.png",
            "/shots/../../secret.png",
        ):
            status, _, _ = b.request(path)
            assert status == 404, path
    finally:
        site.stop()
    without = quote_site.start_site(estimate_delay_s=0.0)
    try:
        status, _, _ = Browser(without.url).request("/shots/quote-1/screen-01.png")
        assert status == 404
    finally:
        without.stop()
