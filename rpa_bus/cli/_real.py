"""``rpa-bus demo --real``: real browser robots filling the local quote site.

The robot and the site are the project's examples (``examples/rpa_quote.py`` and
``examples/quote_site/``), the code users copy from, so they are loaded from where they
are rather than copied into this package: from ``rpa_bus/cli/_examples/`` in an installed
wheel (the build puts them there) or from ``examples/`` in a source checkout.

Chromium is Debian's (``apt-get install chromium``) and Playwright only drives it; when
either is missing this says how to install it and nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import typer

from rpa_bus import Settings

# Exit codes of run_real_demo.
OK = 0
UNWRITTEN = 1  # some events are still journaled (Redis unreachable); they go out next run
MISSING = 2  # Chromium, Playwright or the examples are not installed

INSTALL_HINT = """\
rpa-bus demo --real drives a real browser and needs:
  Chromium (Debian's):  apt-get update && apt-get install -y chromium chromium-driver
  Playwright (driver):  pip install playwright
Playwright only drives that Chromium: do not run `playwright install`, no browser is downloaded.
Set RPA_BUS_CHROMIUM=/path/to/chromium to use another Chromium binary."""


def chromium_path(environ: Mapping[str, str] | None = None) -> str | None:
    """The Chromium binary to drive, or None.

    ``RPA_BUS_CHROMIUM`` wins when set (and is then the only candidate, so a wrong value is
    reported instead of silently replaced); else ``/usr/bin/chromium``, else ``chromium``
    on PATH.
    """
    env = os.environ if environ is None else environ
    configured = env.get("RPA_BUS_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def examples_dir() -> Path | None:
    """Where the robot example lives: inside the installed package, or a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_examples", here.parents[1] / "examples"):
        if (candidate / "rpa_quote.py").is_file() and (candidate / "quote_site").is_dir():
            return candidate
    return None


def missing_requirements(environ: Mapping[str, str] | None = None) -> list[str]:
    """What ``demo --real`` lacks, in words; empty when it can run."""
    env = os.environ if environ is None else environ
    missing = []
    if chromium_path(env) is None:
        configured = env.get("RPA_BUS_CHROMIUM")
        missing.append(
            f"Chromium: RPA_BUS_CHROMIUM={configured} is not a file"
            if configured
            else "Chromium: not at /usr/bin/chromium nor on PATH"
        )
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright: the `playwright` Python package is not installed")
    if examples_dir() is None:
        missing.append(
            "the robot example (examples/rpa_quote.py): not in this installation; "
            "run from a source checkout of rpa-bus"
        )
    return missing


def load_examples(directory: Path | None = None) -> tuple[ModuleType, ModuleType]:
    """Import the example robot and its site: the modules ``rpa_quote`` and ``quote_site``.

    They are imported from their files under their own names, as ``python
    examples/rpa_quote.py`` would, without putting the folder on ``sys.path``.
    """
    directory = directory or examples_dir()
    if directory is None:
        raise FileNotFoundError("the robot example (examples/rpa_quote.py) is not installed")
    # The site first: the robot does `from quote_site import ...`.
    site = sys.modules.get("quote_site") or _import_file(
        "quote_site", directory / "quote_site" / "__init__.py", package=True
    )
    robot = sys.modules.get("rpa_quote") or _import_file("rpa_quote", directory / "rpa_quote.py")
    return robot, site


def _import_file(name: str, path: Path, *, package: bool = False) -> ModuleType:
    search = [str(path.parent)] if package else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=search)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {name} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@dataclasses.dataclass(frozen=True, slots=True)
class RealDemoOptions:
    robots: int = 2  # browsers at once
    count: int | None = None  # quotes in all; None runs until Ctrl-C
    fail_every: int = 4  # every n-th quote uses the plate the site fails on (0: never)
    estimate_delay_s: float = 3.0  # how long the site "calculates" on screen 5
    latency_s: float = 0.25  # added to each page of the site, so people can watch it move
    screenshots: Path | None = None  # default: <tmp>/rpa-bus-demo-screens
    session_prefix: str = "robot"


def run_real_demo(
    *,
    settings: Settings,
    options: RealDemoOptions | None = None,
    echo: Callable[[str], None] = typer.echo,
) -> int:
    """Run real quote robots against the local quote site, reporting to ``settings``' Redis.

    Prints what it starts and one line per finished quote through ``echo``; on Ctrl-C the
    robots stop at their next screen (their sessions end ``failed``). Returns an exit code:
    ``OK`` (0), ``UNWRITTEN`` (1) when events could not all be written to Redis (they stay
    journaled), or ``MISSING`` (2) after printing how to install what is missing.
    """
    opts = options or RealDemoOptions()
    missing = missing_requirements()
    browser = chromium_path()
    if missing or browser is None:
        echo("rpa-bus demo --real cannot run:\n" + "".join(f"  - {m}\n" for m in missing))
        echo(INSTALL_HINT)
        return MISSING
    robot, quote_site = load_examples()
    from producer import Producer

    screenshots = opts.screenshots or Path(tempfile.gettempdir()) / "rpa-bus-demo-screens"
    outcomes: dict[str, int] = {"finished": 0, "failed": 0}

    def on_outcome(outcome: Any) -> None:
        outcomes[outcome.status] = outcomes.get(outcome.status, 0) + 1
        detail = f"premium {outcome.quote['premium']:.2f}" if outcome.quote else outcome.error or ""
        echo(f"demo --real: {outcome.session} {outcome.status}: {detail}")

    bus = Producer(settings=settings)
    # The site serves the robots' screenshots too: the bus carries their URLs, and the
    # dashboard shows them as thumbnails beside their steps.
    site = quote_site.start_site(
        estimate_delay_s=opts.estimate_delay_s, latency_s=opts.latency_s, shots_dir=screenshots
    )
    try:
        endless = "until Ctrl-C" if opts.count is None else f"{opts.count} quotes"
        echo(
            f"demo --real: {opts.robots} Chromium robots ({browser}), {endless}, filling the "
            f"quote site at {site.url}, writing to {settings.redis_url}; "
            f"screenshots in {screenshots}"
        )
        robot.run_robots(
            bus,
            site_url=site.url,
            jobs=_jobs(robot, quote_site.FAILING_PLATE, opts),
            robots=opts.robots,
            screenshots=screenshots,
            browser_path=browser,
            shots_url=f"{site.url}/shots",
            on_outcome=on_outcome,
        )
    except KeyboardInterrupt:
        # run_robots has told the robots to stop and waited for them.
        echo("demo --real: stopped")
    finally:
        site.stop()
        written = bus.flush(timeout_s=10.0)
        bus.close()
    echo(f"demo --real: {outcomes['finished']} finished, {outcomes['failed']} failed")
    if not written:
        echo("demo --real: some events are not in Redis yet; they stay journaled and go next run")
        return UNWRITTEN
    return OK


def _jobs(
    robot: ModuleType, failing_plate: str, opts: RealDemoOptions
) -> Iterator[tuple[str, Any]]:
    """Session ids and customers; every ``fail_every``-th one gets the failing plate."""
    sids = robot.session_ids(opts.session_prefix, opts.count)
    for n, sid in zip(itertools.count(1), sids, strict=False):
        request = robot.QuoteRequest.sample(n)
        if opts.fail_every and n % opts.fail_every == 0:
            request = dataclasses.replace(request, plate=failing_plate)
        yield sid, request
