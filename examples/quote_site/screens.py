"""The quote flow: 15 screens, their fields, their validation and the pricing.

Pure functions and data, no HTTP: ``server.py`` renders and serves them. Each screen is a
form; a submission is checked field by field (and across fields), and a screen only opens
once the ones before it are done, as on a real insurer's portal.
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

TOTAL_SCREENS = 15
ESTIMATES_SCREEN = 5
RISK_SCREEN = 9

# Submitting the risk questionnaire (screen 9) for this plate fails with HTTP 500, the way
# a real insurer's rating engine sometimes does: the robot's failure path, on demand.
FAILING_PLATE = "FAIL000"

FieldKind = Literal["text", "password", "date", "email", "number", "select", "checkbox", "radio"]
Values = Mapping[str, str]


class ServerFailure(Exception):
    """The site breaks (HTTP 500) with this message."""


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    label: str
    kind: FieldKind = "text"
    options: tuple[str, ...] = ()  # select and radio choices
    required: bool = True
    pattern: str | None = None  # a full-match regex for text-like fields
    hint: str = ""  # what the pattern means, for the error message
    lo: int | None = None  # number range
    hi: int | None = None


@dataclass(frozen=True, slots=True)
class Screen:
    number: int
    title: str
    fields: tuple[Field, ...] = ()
    # Cross-field rules: given this screen's values and the answers so far, return errors.
    rules: tuple[Callable[[Values, Values], list[str]], ...] = field(default=())
    button: str = "Continue"


def _age(birth_date: str, today: dt.date | None = None) -> int:
    born = dt.date.fromisoformat(birth_date)
    today = today or dt.date.today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _policyholder_age(values: Values, _answers: Values) -> list[str]:
    try:
        age = _age(values["birth_date"])
    except ValueError:
        return ["birth_date: not a date (use YYYY-MM-DD)"]
    if not 18 <= age <= 100:
        return [f"birth_date: the policyholder must be 18 to 100 years old, not {age}"]
    return []


def _licence_years(values: Values, answers: Values) -> list[str]:
    years = int(values["licence_years"])
    age = _age(answers["birth_date"])
    if values["main_driver"] == "policyholder" and years > age - 18:
        return [f"licence_years: a {age}-year-old cannot have held a licence for {years} years"]
    return []


def _third_party_required(values: Values, _answers: Values) -> list[str]:
    if values.get("third_party") != "on":
        return ["third_party: third-party liability cover is mandatory"]
    return []


def _instalments(values: Values, _answers: Values) -> list[str]:
    if values["method"] == "bank_slip" and int(values["instalments"]) > 4:
        return ["instalments: bank slips allow at most 4 instalments"]
    return []


def _checked(name: str, why: str) -> Callable[[Values, Values], list[str]]:
    def rule(values: Values, _answers: Values) -> list[str]:
        return [] if values.get(name) == "on" else [f"{name}: {why}"]

    return rule


_YEAR_MAX = dt.date.today().year + 1

SCREENS: tuple[Screen, ...] = (
    Screen(
        1,
        "Broker login",
        (
            Field("broker_code", "Broker code", pattern=r"BRK-\d{4}", hint="BRK- and 4 digits"),
            Field("password", "Password", "password", pattern=r".{4,}", hint="4+ characters"),
        ),
        button="Log in",
    ),
    Screen(
        2,
        "Policyholder",
        (
            Field("full_name", "Full name", pattern=r"\S+( \S+)+", hint="first and last name"),
            Field("birth_date", "Date of birth", "date", pattern=r"\d{4}-\d{2}-\d{2}"),
            Field("email", "E-mail", "email", pattern=r"[^@\s]+@[^@\s]+\.[^@\s]+"),
        ),
        (_policyholder_age,),
    ),
    Screen(
        3,
        "Main driver",
        (
            Field("main_driver", "Main driver", "select", ("policyholder", "someone else")),
            Field("licence_number", "Licence number", pattern=r"\d{11}", hint="11 digits"),
            Field("licence_years", "Years licensed", "number", lo=0, hi=82),
        ),
        (_licence_years,),
    ),
    Screen(
        4,
        "Vehicle",
        (
            Field("plate", "Plate", pattern=r"[A-Z0-9]{7}", hint="7 capital letters or digits"),
            Field("make_model", "Make and model", pattern=r".{2,60}"),
            Field("year", "Model year", "number", lo=1990, hi=_YEAR_MAX),
            Field("use", "Use", "select", ("private", "commercial", "ride-hailing")),
        ),
        button="Calculate estimates",
    ),
    Screen(
        ESTIMATES_SCREEN,
        "Premium estimates",
        (Field("plan", "Plan", "radio"),),  # options are the estimates, set per quote
        button="Choose this plan",
    ),
    Screen(
        6,
        "Coverages",
        (
            Field("third_party", "Third-party liability", "checkbox", required=False),
            Field("theft", "Theft and fire", "checkbox", required=False),
            Field("glass", "Windows and mirrors", "checkbox", required=False),
            Field("rental_car", "Rental car while in repair", "checkbox", required=False),
        ),
        (_third_party_required,),
    ),
    Screen(
        7,
        "Roadside assistance",
        (
            Field("assistance", "Assistance plan", "select", ("basic", "plus", "premium")),
            Field("towing_km", "Towing distance (km)", "select", ("100", "200", "500")),
        ),
    ),
    Screen(
        8,
        "Deductible",
        (Field("deductible", "Deductible", "select", ("reduced", "standard", "increased")),),
    ),
    Screen(
        RISK_SCREEN,
        "Risk questionnaire",
        (
            Field("garage", "Garage at night", "select", ("home", "work", "both", "none")),
            Field("commute_km", "Daily commute (km)", "number", lo=0, hi=300),
            Field("young_drivers", "Drivers under 25", "select", ("no", "yes")),
        ),
    ),
    Screen(
        10,
        "Overnight address",
        (
            Field("postcode", "Postcode", pattern=r"\d{5}-\d{3}", hint="00000-000"),
            Field("street", "Street", pattern=r".{3,80}"),
            Field("number", "Number", pattern=r"[0-9A-Za-z -]{1,10}"),
        ),
    ),
    Screen(
        11,
        "Payment method",
        (
            Field("method", "Method", "select", ("card", "bank_slip", "debit")),
            Field("instalments", "Instalments", "number", lo=1, hi=12),
        ),
        (_instalments,),
    ),
    Screen(
        12,
        "Review",
        (Field("confirm", "The details above are correct", "checkbox", required=False),),
        (_checked("confirm", "confirm the details before going on"),),
    ),
    Screen(
        13,
        "Terms and conditions",
        (
            Field("accept_terms", "I accept the policy terms", "checkbox", required=False),
            Field("marketing", "Send me offers", "checkbox", required=False),
        ),
        (_checked("accept_terms", "the terms must be accepted"),),
    ),
    Screen(14, "Proposal", button="Issue quote"),
    Screen(TOTAL_SCREENS, "Your quote"),
)


def screen(number: int) -> Screen:
    return SCREENS[number - 1]


def validate(scr: Screen, values: Values, answers: Values, plans: tuple[str, ...]) -> list[str]:
    """The errors in one submission of ``scr`` (empty when it is accepted)."""
    errors: list[str] = []
    for f in scr.fields:
        value = values.get(f.name, "").strip()
        if f.kind == "checkbox":
            continue
        if not value:
            if f.required:
                errors.append(f"{f.name}: required")
            continue
        options = plans if f.kind == "radio" else f.options
        if options and value not in options:
            errors.append(f"{f.name}: choose one of {', '.join(options)}")
        elif f.pattern and not re.fullmatch(f.pattern, value):
            errors.append(f"{f.name}: {value!r} is not valid" + (f" ({f.hint})" if f.hint else ""))
        elif f.kind == "number":
            if not re.fullmatch(r"-?\d+", value):
                errors.append(f"{f.name}: {value!r} is not a whole number")
            elif not (f.lo or 0) <= int(value) <= (f.hi if f.hi is not None else 10**9):
                errors.append(f"{f.name}: must be between {f.lo} and {f.hi}")
    if errors:
        return errors  # cross-field rules assume each field is well formed
    for rule in scr.rules:
        errors.extend(rule(values, answers))
    return errors


def check_risk(answers: Values) -> None:
    """The insurer's rating engine, called when the risk questionnaire is submitted."""
    if answers.get("plate") == FAILING_PLATE:
        raise ServerFailure(
            f"Rating engine error E-RISK-500: vehicle {FAILING_PLATE} could not be rated "
            "(underwriting service unavailable). Please try again later."
        )


# Pricing: deterministic from the answers, so a given input always gives the same quote.

INSURERS = (
    ("atlas", "Atlas Seguros", 1.00),
    ("porto", "Porto Norte", 1.07),
    ("aurora", "Aurora Mutual", 0.94),
    ("vela", "Vela Insurance", 1.12),
)


def _base_premium(answers: Values) -> float:
    year = int(answers.get("year", _YEAR_MAX))
    age_factor = 1.0 + max(0, _YEAR_MAX - year) * 0.015
    use_factor = {"private": 1.0, "commercial": 1.35, "ride-hailing": 1.6}.get(
        answers.get("use", "private"), 1.0
    )
    # A stable per-vehicle nudge, as if the insurer knew each plate's history.
    nudge = 0.9 + (zlib.crc32(answers.get("plate", "").encode()) % 200) / 1000
    return 1800.0 * age_factor * use_factor * nudge


def _spread(plan: str, plate: str) -> float:
    return 0.9 + (zlib.crc32(f"{plan}:{plate}".encode()) % 200) / 1000


def estimates(answers: Values) -> list[dict[str, str | float]]:
    """The premium estimates shown on screen 5, cheapest first."""
    base = _base_premium(answers)
    plate = answers.get("plate", "")
    plans: list[dict[str, str | float]] = [
        # Each insurer prices each vehicle a little differently, so the cheapest one varies.
        {"plan": plan, "insurer": name, "premium": round(base * factor * _spread(plan, plate), 2)}
        for plan, name, factor in INSURERS
    ]
    return sorted(plans, key=lambda p: float(p["premium"]))


def final_premium(answers: Values) -> float:
    chosen = next(p for p in estimates(answers) if p["plan"] == answers["plan"])
    premium = float(chosen["premium"])
    premium *= {"reduced": 1.15, "standard": 1.0, "increased": 0.85}[answers["deductible"]]
    premium *= {"basic": 1.0, "plus": 1.04, "premium": 1.09}[answers["assistance"]]
    premium *= 1.0 + 0.06 * sum(answers.get(k) == "on" for k in ("theft", "glass", "rental_car"))
    premium *= 0.95 if answers.get("garage") in ("home", "both") else 1.05
    premium *= 1.2 if answers.get("young_drivers") == "yes" else 1.0
    return round(premium, 2)
