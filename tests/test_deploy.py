"""compose.yaml and the Dockerfile name only real rpa-bus commands and options.

Docker cannot run on the development machines, so this checks what can go wrong without
it: the file parses, it has the services operators rely on, and every `rpa-bus ...`
command line in it is accepted by the real CLI (each line is parsed by the command's own
option parser, which refuses unknown options and bad values).
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import zipfile
from typing import Any

import pytest
import yaml
from typer.main import get_command

from rpa_bus.cli._app import app
from rpa_bus.cli._commands import register_all

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _compose() -> dict[str, dict[str, object]]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _cli() -> Any:
    """The Click group behind the Typer app (typer ships its own copy of Click)."""
    register_all()
    return get_command(app)


def _command_lines() -> list[list[str]]:
    lines: list[list[str]] = []
    for service in _compose()["services"].values():
        assert isinstance(service, dict)
        for key in ("command",):
            value = service.get(key)
            if isinstance(value, list) and value and value[0] == "rpa-bus":
                lines.append([str(v) for v in value])
        health = service.get("healthcheck")
        if isinstance(health, dict):
            test = health.get("test")
            if isinstance(test, list) and len(test) > 1 and test[1] == "rpa-bus":
                lines.append([str(v) for v in test[1:]])
    docker_cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert docker_cmd is not None
    lines.append(yaml.safe_load(docker_cmd.group(1)))
    return lines


def test_compose_has_what_operators_rely_on() -> None:
    services = _compose()["services"]
    assert {"redis", "relay-1", "relay-2", "monitor"} <= set(services)
    redis = services["redis"]
    assert "--appendonly" in redis["command"]  # type: ignore[operator]
    assert any("redis-data" in v for v in redis["volumes"])  # type: ignore[attr-defined]
    names = []
    for name in ("relay-1", "relay-2"):
        command = services[name]["command"]
        assert isinstance(command, list)
        names.append(command[command.index("--name") + 1])
        assert "healthz" in str(services[name]["healthcheck"])
    assert names == ["relay-1", "relay-2"]  # each relay its own consumer group
    for name in ("redis", "relay-1", "relay-2", "monitor"):
        assert "healthcheck" in services[name], name


@pytest.mark.parametrize("line", _command_lines(), ids=lambda line: " ".join(line[:2]))
def test_every_command_line_is_a_real_command(line: list[str]) -> None:
    cli = _cli()
    assert line[0] == "rpa-bus"
    if line[1:] == ["--help"]:
        return
    root = cli.make_context("rpa-bus", list(line[1:]))
    command = cli.get_command(root, line[1])
    assert command is not None, f"rpa-bus has no command {line[1]!r}"
    # make_context parses the arguments exactly as a run would (unknown options and bad
    # values raise), without running the command.
    ctx = command.make_context(line[1], list(line[2:]), parent=root)
    given = {p.name for p in command.params if ctx.get_parameter_source(p.name).name != "DEFAULT"}
    assert given, f"no option of {line} was recognised"


def _docker_copies() -> list[tuple[list[str], str]]:
    """The Dockerfile's ``COPY src... dest`` lines (shell form), in order."""
    copies: list[tuple[list[str], str]] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            args = [w for w in words[1:] if not w.startswith("--")]
            assert len(args) >= 2, line
            copies.append((args[:-1], args[-1]))
    return copies


def test_the_image_installs_from_exactly_what_the_dockerfile_copies(tmp_path: pathlib.Path) -> None:
    """`pip install .` in the image sees only what COPY put in /app: build the wheel from
    exactly those files (offline, with the installed hatchling, no Docker daemon), so a
    file pyproject needs and the Dockerfile forgets (examples/ once) fails here."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    copies = _docker_copies()
    assert copies, "the Dockerfile copies nothing"
    for sources, dest in copies:
        for source in sources:
            src = ROOT / source
            assert src.exists(), f"the Dockerfile copies {source}, which does not exist"
            # Docker's rules: a directory's content goes into dest; a file goes into dest
            # when dest ends with "/", else becomes dest.
            if src.is_dir():
                shutil.copytree(
                    src,
                    app_dir / dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    dirs_exist_ok=True,
                )
            else:
                target = app_dir / dest / src.name if dest.endswith("/") else app_dir / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    out = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    build = subprocess.run(
        [*pip, "--no-index", "-w", str(out), str(app_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("rpa_bus-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("rpa_bus", "producer", "relay", "monitor", "workers"):
        assert f"{package}/__init__.py" in names, package
    # What `rpa-bus demo --real` runs, carried by the force-include.
    assert "rpa_bus/cli/_examples/rpa_quote.py" in names


def test_compose_archives_into_postgres_on_a_volume() -> None:
    data = _compose()
    services = data["services"]
    assert any("postgres-data" in v for v in services["postgres"]["volumes"])  # type: ignore[attr-defined]
    assert "postgres-data" in data["volumes"]
    archivers = [s for name, s in services.items() if name.startswith("archiver")]
    assert len(archivers) == 2  # two processes share the group, either takes over
    for service in archivers:
        assert service["command"][:2] == ["rpa-bus", "archiver"]  # type: ignore[index]
        assert service["environment"]["RPA_BUS_ARCHIVE_URL"].startswith("postgresql://")  # type: ignore[index]
        assert "postgres" in service["depends_on"]  # type: ignore[operator]
