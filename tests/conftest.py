"""Shared fixtures: a config per test, a fresh database (SQLite, or PostgreSQL when
MAILGATE_TEST_DB=postgresql), the mailgate CLI in-process and as a real process, and a real
`mailgate serve` on loopback ports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    DaemonProcess, checkpoint, cli_in_process, pg_create_database, pg_drop_database, pg_drop_database_later, pg_drops_done,
    pg_pool, pg_template, pg_url, sqlite_template, write_config,
)

TEST_DB = os.environ.get("MAILGATE_TEST_DB", "sqlite")


def pytest_collection_modifyitems(config, items):
    """The PostgreSQL pass runs only the tests whose subject involves the database: the others
    (parsing, rendering, config, the spool on its own — and, marked `one_database`, the
    listener, the IMAP poller, OAuth2, worker supervision, the budget, signals, which use a
    database only to look at the result) ran in the SQLite pass and would only repeat."""
    if TEST_DB != "postgresql":
        return
    kept, skipped = [], []
    for item in items:
        uses_db = bool(DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())))
        wanted = (uses_db or item.get_closest_marker("database")) and not item.get_closest_marker("one_database")
        (kept if wanted else skipped).append(item)
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = kept


DATABASE_FIXTURES = {"database_url", "empty_database_url", "pg_template_name", "db_template"}


@pytest.fixture(scope="session")
def db_template(tmp_path_factory):
    """A migrated database that each test's database is copied from: migrating costs 0.4 s a
    test on SQLite; a copy of the file (or CREATE DATABASE … TEMPLATE) costs milliseconds."""
    if TEST_DB == "postgresql":
        name = pg_template()
        yield name
        pg_drop_database(name)
        return
    path = tmp_path_factory.mktemp("template") / "mailgate.db"
    sqlite_template(path)
    yield path


@pytest.fixture(scope="session")
def pg_template_name(db_template):
    return db_template if TEST_DB == "postgresql" else None


@pytest.fixture
def database_url(request, tmp_path: Path, db_template) -> str:
    """A database of this test's own, already at the newest schema — and holding the test
    world (tests/world.py) when the test asks for `world_app` or `people_app`."""
    template = db_template
    for fixture, seeded in (("world_app", True), ("people_app", False)):
        if fixture in request.fixturenames:
            template = request.getfixturevalue("world_templates")[seeded]
            shutil.copytree(template.state_dir, tmp_path / "state", dirs_exist_ok=True)
            template = template.database
    if TEST_DB != "postgresql":
        shutil.copyfile(template, tmp_path / "mailgate.db")
        yield f"sqlite:///{tmp_path / 'mailgate.db'}"
        return
    name = pg_pool.take(template)
    yield pg_url(name)
    pg_pool.give_back(name, template)


@dataclass(frozen=True)
class WorldTemplate:
    database: Path | str  # a SQLite file, or the name of a PostgreSQL template database
    state_dir: Path  # the blobs the seed messages left (their raw bytes)


@pytest.fixture(scope="session")
def world_templates(tmp_path_factory, db_template):
    """The test world built once per test process — {True: with the seed tickets, False:
    organisations and contacts only} — to be copied into each test that asks for it
    (building it costs a quarter of a second: two messages through the pipeline)."""
    from mailgate import config as config_module
    from mailgate.app import App
    from tests import world

    built, databases = {}, []
    for seeded in (True, False):
        root = tmp_path_factory.mktemp("world")
        if TEST_DB == "postgresql":
            name = f"mg_world_{os.getpid()}_{int(seeded)}"
            pg_drop_database(name)
            url, database = pg_create_database(name, template=db_template), name
            databases.append(name)
        else:
            database = root / "mailgate.db"
            shutil.copyfile(db_template, database)
            url = f"sqlite:///{database}"
        app = App(config_module.load(write_config(root / "mailgate.toml", root / "state", url, {}))).prepare()
        world.build(app, seed_tickets=seeded)
        app.db.dispose()  # a template database takes no connections
        if TEST_DB != "postgresql":
            checkpoint(database)
        built[seeded] = WorldTemplate(database, root / "state")
    yield built
    for name in databases:
        pg_drop_database(name)


@pytest.fixture
def empty_database_url(tmp_path: Path) -> str:
    """A database with no schema at all (for the migrations)."""
    if TEST_DB != "postgresql":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"mg_empty_{uuid.uuid4().hex[:12]}"
    url = pg_create_database(name)
    yield url
    pg_drop_database_later(name)


@pytest.fixture
def make_config(tmp_path: Path, database_url: str):
    """make_config(**sections) → path of a config file for this test (ports 0 = any free)."""

    def make(name: str = "mailgate.toml", **sections) -> Path:
        return write_config(tmp_path / name, tmp_path / "state", database_url, sections)

    return make


@pytest.fixture
def config_path(make_config) -> Path:
    return make_config()


@pytest.fixture
def cli(config_path: Path):
    """cli(*args, stdin=b"") → (exit code, stdout, stderr), through mailgate.cli.main in-process."""

    def run(*args: str, stdin: bytes = b"", config: Path | None = None):
        return cli_in_process(["--config", str(config or config_path), *args], stdin)

    return run


@pytest.fixture
def cli_process(config_path: Path):
    """The CLI as a real process, for exit codes and what a user sees."""

    def run(*args: str, stdin: bytes = b"", config: Path | None = None, env: dict | None = None):
        return subprocess.run(
            [sys.executable, "-m", "mailgate", "--config", str(config or config_path), *args],
            input=stdin, capture_output=True, timeout=60, env={**os.environ, **(env or {})},
        )

    return run


@pytest.fixture
def daemon(config_path: Path):
    """daemon(config=None, env=None, wrapper=None) → a started `mailgate serve` process (run
    under WRAPPER, a command such as setpriv, when given); stopped at the end."""
    started: list[DaemonProcess] = []

    def start(config: Path | None = None, env: dict | None = None, wrapper: list[str] | None = None) -> DaemonProcess:
        d = DaemonProcess(config or config_path, env, wrapper)
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def world_app(config_path):
    """An App on this test's config with the test world (tests/world.py) and seed tickets."""
    yield from _world(config_path, seed_tickets=True)


@pytest.fixture
def people_app(config_path):
    """An App with the world's organisations and contacts, but no tickets yet."""
    yield from _world(config_path, seed_tickets=False)


def _world(config_path: Path, seed_tickets: bool):
    """The world was copied in with the database (`database_url`)."""
    from mailgate import config as config_module
    from mailgate.app import App

    app = App(config_module.load(config_path)).prepare()
    yield app
    app.db.dispose()



_REALWORLD_SCORES: list[str] = []


def pytest_runtest_logreport(report):
    """Collect the real-world corpus scores (tests/unit/test_realworld.py), from xdist workers too."""
    for name, value in getattr(report, "user_properties", ()):
        if name == "real-world scores" and report.when == "call":
            _REALWORLD_SCORES.extend(value)


def pytest_sessionfinish(session):
    pg_pool.drop_all()
    pg_drops_done()  # no database of a test outlives the run


def pytest_terminal_summary(terminalreporter):
    if _REALWORLD_SCORES:
        terminalreporter.section("real-world mail: scores per kind")
        for line in _REALWORLD_SCORES:
            terminalreporter.write_line(line)
