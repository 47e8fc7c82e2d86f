"""A throwaway PostgreSQL server on 127.0.0.1 holding k-msg's table, for the import tests.

CI starts one before the tests (``.ci/run``); for local use::

    eval "$(.venv/bin/python -m tests._pg_server start --dir /tmp/kmsg-pg)"
    .venv/bin/python -m pytest tests/test_kmsg_import.py
    .venv/bin/python -m tests._pg_server stop --dir /tmp/kmsg-pg

``start`` runs the system's PostgreSQL binaries (Debian: ``apt-get install postgresql``)
on a free port with its data in ``--dir``, creates the database ``kmsg`` with k-msg's
PostgreSQL table definition (``ddl-postgres.sql``) and the fixture database's rows, and
prints ``export KMSG_TEST_POSTGRES_URL=...``. The tests import from that database;
tests that write tables of their own get a fresh database on the same server. Without
the variable the tests start a server of their own the same way, and skip (saying why)
only where no PostgreSQL is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "kmsg"
FIXTURE_DB = FIXTURES / "kmsg-small.sqlite"
#: The environment variable naming a started server's fixture database.
URL_VARIABLE = "KMSG_TEST_POSTGRES_URL"
_USER = "kmsg"


def postgres_bin() -> Path | None:
    """The directory of ``pg_ctl`` and ``initdb`` (``None``: PostgreSQL is not installed)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> dict[str, int]:
    """initdb refuses root: the server then runs as an unprivileged user."""
    if os.geteuid() != 0:
        return {}
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return {"user": pw.pw_uid, "group": pw.pw_gid}
    return {}


@dataclass(frozen=True)
class Server:
    """A started server, by the port it listens on (127.0.0.1)."""

    port: int

    def url(self, database: str) -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"


def _pg(bindir: Path, *args: str) -> None:
    run_as = _run_as()
    subprocess.run(
        [str(bindir / args[0]), *args[1:]],
        check=True,
        capture_output=True,
        timeout=120,
        user=run_as.get("user"),
        group=run_as.get("group"),
    )


def start(base: Path) -> Server:
    """Start a server with its data in ``base`` (created; must not hold a server yet)."""
    bindir = postgres_bin()
    if bindir is None or not (bindir / "initdb").exists():
        msg = "no PostgreSQL server binaries (pg_ctl/initdb): apt-get install postgresql"
        raise FileNotFoundError(msg)
    base.mkdir(parents=True, exist_ok=True)
    run_as = _run_as()
    if run_as:
        os.chown(base, run_as["user"], run_as["group"])
    data = base / "data"
    init = ["initdb", "-D", str(data), "-U", _USER, "--auth=trust", "-E", "UTF8", "--locale=C"]
    _pg(bindir, *init, "--no-sync")
    for attempt in range(3):  # the free port may be taken before the server binds it
        port = _free_port()
        options = f"-p {port} -h 127.0.0.1 -k {base} -c fsync=off -c full_page_writes=off"
        try:
            _pg(bindir, "pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w",
                "-o", options, "start")  # fmt: skip
            break
        except subprocess.CalledProcessError:
            if attempt == 2:
                raise
    return Server(port)


def stop(base: Path) -> None:
    """Stop the server whose data is in ``base`` and remove the directory."""
    bindir = postgres_bin()
    if bindir is not None and (base / "data").exists():
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            _pg(bindir, "pg_ctl", "-D", str(base / "data"), "-m", "fast", "-w", "stop")
    shutil.rmtree(base, ignore_errors=True)


def execute(url: str, sql: str, rows: Sequence[Sequence[Any]] = ()) -> None:
    """Run ``sql`` (once, or once per row of ``rows``) with autocommit."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con, con.cursor() as cur:
        if rows:
            cur.executemany(sql, rows)
        else:
            cur.execute(sql)


def create_database(server_url: str, name: str) -> None:
    execute(server_url, f'CREATE DATABASE "{name}"')


def drop_database(server_url: str, name: str) -> None:
    execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_kmsg_fixture(url: str) -> int:
    """k-msg's table (``ddl-postgres.sql``) in ``url``'s database, with the fixture's rows.

    Idempotent: a database that already holds them is left as it is. Returns the rows.
    """
    import psycopg

    con = sqlite3.connect(f"file:{FIXTURE_DB}?mode=ro", uri=True)
    try:
        cur = con.execute("SELECT * FROM kmsg_delivery_tracking")
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    with psycopg.connect(url, autocommit=True) as pg:
        found = pg.execute("SELECT to_regclass('kmsg_delivery_tracking') IS NOT NULL").fetchone()
        if found and found[0]:
            count = pg.execute("SELECT count(*) FROM kmsg_delivery_tracking").fetchone()
            if count and count[0] == len(rows):
                return len(rows)
            pg.execute("DROP TABLE kmsg_delivery_tracking")
    execute(url, (FIXTURES / "ddl-postgres.sql").read_text(encoding="utf-8"))
    cols = ", ".join(f'"{n}"' for n in names)
    marks = ", ".join("%s::jsonb" if n in ("last_error", "metadata") else "%s" for n in names)
    execute(url, f"INSERT INTO kmsg_delivery_tracking ({cols}) VALUES ({marks})", rows)
    return len(rows)


def start_with_fixture(base: Path) -> str:
    """Start a server in ``base``, load the fixture into its ``kmsg`` database; its URL."""
    try:
        server = start(base)
        create_database(server.url("postgres"), "kmsg")
        load_kmsg_fixture(server.url("kmsg"))
    except BaseException:
        stop(base)
        raise
    return server.url("kmsg")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests._pg_server", description=__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, required=True, help="the server's data directory")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.dir)
        return 0
    try:
        url = start_with_fixture(args.dir)
    except (FileNotFoundError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        print(f"could not start PostgreSQL: {err} {detail.decode(errors='replace')}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"export {URL_VARIABLE}={url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
