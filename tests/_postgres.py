"""A private PostgreSQL server for the tests: its own data folder, a free loopback port.

Never the machine's shared server on 5432. ``initdb`` refuses to run as root, so as root
the server runs as the ``postgres`` user when there is one (Debian's package creates it),
else as ``nobody``, through ``runuser``. Binaries: ``initdb``/``pg_ctl`` on PATH, else the
newest ``/usr/lib/postgresql/*/bin`` (Debian's layout). None found: the fixture fails
saying how to install them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from rpa_bus.cli._embedded import free_port

INSTALL_HINT = (
    "no PostgreSQL server binaries (initdb, pg_ctl) found on PATH or in "
    "/usr/lib/postgresql/*/bin: install them (Debian/Ubuntu: apt-get install postgresql)"
)


class PostgresNotFound(RuntimeError):
    pass


def find_pg_bin() -> Path:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    raise PostgresNotFound(INSTALL_HINT)


def _run_as() -> str | None:
    """The user to run the server as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresNotFound("running as root and no 'postgres' or 'nobody' user to run as")


class LocalPostgres:
    """initdb once, then start()/stop()/kill() at will; data survives stop/start."""

    def __init__(self, folder: Path, *, port: int | None = None) -> None:
        self.bin = find_pg_bin()
        self.folder = folder
        self.data = folder / "data"
        self.port = port or free_port()
        self.user = _run_as()
        self.role = "rpa"

    def _cmd(self, *argv: str) -> list[str]:
        if self.user is None:
            return list(argv)
        return ["runuser", "-u", self.user, "--", *argv]

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
            # The user must reach the folder through its parents: our own temp folder
            # (mkdtemp makes it 0700) is opened for traversal; anything else must be already.
            for parent in self.folder.parents:
                mode = parent.stat().st_mode
                if mode & 0o001:
                    continue
                if not parent.name.startswith("rpa-bus-"):
                    raise PermissionError(
                        f"{parent} is not traversable by {self.user!r}: put the server's "
                        "folder under /tmp (tempfile.mkdtemp(prefix='rpa-bus-...'))"
                    )
                parent.chmod(mode | 0o001)
        subprocess.run(
            self._cmd(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.role,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    @property
    def url(self) -> str:
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            self._cmd(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                opts,
                "-l",
                str(self.folder / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"),
            capture_output=True,
            timeout=90,
        )

    def running(self) -> bool:
        proc = subprocess.run(
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "status"),
            capture_output=True,
            timeout=30,
        )
        return proc.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        import psycopg

        with psycopg.connect(self.url_for(database), autocommit=True, connect_timeout=5) as c:
            cur = c.execute(sql.encode())
            return repr(cur.fetchall()) if cur.description else ""
