"""Helpers for the tests: config files, databases, the CLI, a real daemon, waiting on conditions."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import io
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import tomli_w

REPO = Path(__file__).resolve().parent.parent  # the repository's root
PG_ADMIN_URL = os.environ.get("MAILGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-not-for-production"
SUPPORT = "support@example.com"


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.01, message: str = "condition",
             max_interval: float = 0.2):
    """Poll PREDICATE until it returns something truthy; fail after TIMEOUT seconds. The pause
    between polls grows from INTERVAL to MAX_INTERVAL: what comes at once is seen at once, and
    a long wait does not burn the CPU that the awaited daemon needs (a predicate that asks the
    CLI costs ~17 ms of CPU; at a steady 20 ms it took half a core from the daemon)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
        interval = min(interval * 1.5, max(max_interval, interval))


def children_of(pid: int) -> list[int]:
    """The PIDs whose parent is PID (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def group_alive(group: int) -> bool:
    """Whether a process of process group GROUP still runs. Zombies do not count: whoever
    reaps orphans here may take a second to, and a zombie holds no port and no file."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                return True
    return False


def alive(pid: int) -> bool:
    """Whether PID runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- config ----------------------------------------------------------------------------------


def write_config(path: Path, state_dir: Path, database_url: str, sections: dict) -> Path:
    base = {
        "database": {"url": database_url},
        "storage": {"state_dir": str(state_dir)},
        "smtp": {"host": "127.0.0.1", "port": 0},
        "http": {"host": "127.0.0.1", "port": 0},
        "tickets": {"key_prefix": "SD", "support_addresses": [SUPPORT]},
        "security": {"secret": SECRET},
        "logging": {"level": "INFO"},
        # Processing in the daemon: a worker process costs each started daemon a second of CPU
        # and two of wall time. The tests of what worker processes are for (the budget, deaths,
        # supervision, more cores) and of the embedded defaults ask for them.
        "processing": {"processes": 0},
    }
    for name, values in sections.items():
        if isinstance(values, list):
            base[name] = values
        else:
            base.setdefault(name, {}).update(values)
    path.write_text(tomli_w.dumps(base))
    return path


# --- PostgreSQL ------------------------------------------------------------------------------


@functools.cache
def _admin():
    """One engine per test process for creating and dropping databases (a connection costs
    more than a CREATE DATABASE … TEMPLATE)."""
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


def pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def pg_create_database(name: str, template: str | None = None) -> str:
    with _admin().connect() as conn:
        suffix = f" TEMPLATE {template}" if template else ""
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{suffix}'))
    return pg_url(name)


def pg_drop_database(name: str) -> None:
    with _admin().connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


_dropper = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-drop")
_drops: list[concurrent.futures.Future] = []


def pg_drop_database_later(name: str) -> None:
    """Drop NAME while the next test runs (a drop waits for the disk; nothing reads it again)."""
    _drops.append(_dropper.submit(pg_drop_database, name))


def pg_drops_done() -> None:
    """Wait for the drops handed to pg_drop_database_later; raise the first that failed."""
    for future in _drops:
        future.result()
    _drops.clear()


class PgPool:
    """Test databases used again instead of created and dropped per test. On PostgreSQL 15 a
    CREATE DATABASE … TEMPLATE copies every catalog file and a DROP DATABASE forces a checkpoint:
    about 0.2 s of the server's CPU and disk a test, most of what the PostgreSQL pass spent
    beyond the tests themselves. A used database is put back as its template was instead — its
    rows deleted, the template's rows written again, its sequences set back (about 10 ms) — and
    dropped when it cannot be (its schema changed, say)."""

    def __init__(self) -> None:
        self._free: dict[str, list[str]] = {}  # template → databases equal to it, waiting
        self._snapshots: dict[str, _Snapshot] = {}

    def take(self, template: str) -> str:
        """A database equal to TEMPLATE, for one test; its name."""
        free = self._free.setdefault(template, [])
        if free:
            return free.pop()
        name = f"mg_test_{os.getpid()}_{len(self._snapshots)}_{time.monotonic_ns()}"
        pg_create_database(name, template=template)
        if template not in self._snapshots:  # a fresh copy is the template (which takes no connections)
            self._snapshots[template] = _Snapshot.of(pg_url(name))
        return name

    def give_back(self, name: str, template: str) -> None:
        """Put NAME back as TEMPLATE was, for the next test; dropped if that fails."""
        try:
            self._snapshots[template].restore(pg_url(name))
        except Exception:  # noqa: BLE001 — whatever the test left, a new copy is the safe answer
            pg_drop_database_later(name)
            return
        self._free[template].append(name)

    def drop_all(self) -> None:
        for names in self._free.values():
            for name in names:
                pg_drop_database_later(name)
        self._free.clear()


@dataclass
class _Snapshot:
    """The rows, sequences and schema of a template database, to put a copy back with."""

    schema: list[tuple]
    rows: list[tuple[sa.Table, list[dict]]]
    sequences: list[tuple[str, int, bool]]

    @classmethod
    def of(cls, url: str) -> "_Snapshot":
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            metadata = sa.MetaData()
            metadata.reflect(engine)
            with engine.connect() as conn:
                rows = [(table, [dict(r._mapping) for r in conn.execute(table.select())])
                        for table in metadata.sorted_tables]
                names = conn.execute(sa.text("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"))
                sequences = [(name, *conn.execute(sa.text(f'SELECT last_value, is_called FROM "{name}"')).one())
                             for name in names.scalars().all()]
                return cls(_schema(conn), rows, sequences)
        finally:
            engine.dispose()

    def restore(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with _admin().connect() as admin:  # what the test left connected (a daemon's pool, say)
            admin.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                if _schema(conn) != self.schema:
                    raise RuntimeError(f"the schema of {name} changed")
                conn.execute(sa.text("SET LOCAL session_replication_role = replica"))  # no foreign-key checks
                for table, _rows in reversed(self.rows):
                    conn.execute(table.delete())
                for table, rows in self.rows:
                    if rows:
                        conn.execute(table.insert(), rows)
                for sequence, value, called in self.sequences:
                    conn.execute(sa.text("SELECT setval(:s, :v, :c)"), {"s": sequence, "v": value, "c": called})
        finally:
            engine.dispose()


def _schema(conn) -> list[tuple]:
    return [tuple(row) for row in conn.execute(sa.text(
        "SELECT table_name, column_name, data_type, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"))]


pg_pool = PgPool()


def sqlite_template(path: Path) -> None:
    """A migrated SQLite database at PATH, checkpointed so that the file alone holds it."""
    from mailgate.db import Database

    db = Database(f"sqlite:///{path}")
    db.upgrade()
    db.dispose()
    checkpoint(path)


def checkpoint(path: Path) -> None:
    """Fold the SQLite database's write-ahead log into PATH, so that a copy of the file alone
    holds everything."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)  # outside a transaction, as a checkpoint must be
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def pg_template() -> str:
    """A migrated database to copy per test (CREATE DATABASE … TEMPLATE is fast)."""
    from mailgate.db import Database

    name = f"mg_template_{os.getpid()}"
    pg_drop_database(name)
    url = pg_create_database(name)
    db = Database(url)
    db.upgrade()
    db.dispose()
    return name


# --- the CLI -----------------------------------------------------------------------------------


def cli_in_process(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    from mailgate.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse usage errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue(), err.getvalue()


# --- a real daemon -----------------------------------------------------------------------------


class DaemonProcess:
    """`python -m mailgate serve` as a child process; its announced ports are parsed."""

    def __init__(self, config: Path, env: dict | None = None, wrapper: list[str] | None = None):
        self.config = Path(config)
        self.env = {**os.environ, **(env or {})}
        self.wrapper = wrapper or []  # a command the daemon runs under (e.g. setpriv)
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.smtp_port = self.http_port = None

    def start(self, timeout: float = 30.0) -> "DaemonProcess":
        self.lines = []
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "mailgate", "--config", str(self.config), "serve"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, text=True, bufsize=1,
        )
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: self._ready() or self.proc.poll() is not None, timeout, message="daemon start")
        if self.proc.poll() is not None:
            raise AssertionError("daemon exited at start:\n" + self.output())
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def _ready(self) -> bool:
        for line in list(self.lines):
            if m := re.search(r"mailgate: (SMTP|LMTP) on [\d.]+:(\d+)", line):
                self.smtp_port = int(m.group(2))
            if m := re.search(r"mailgate: HTTP on [\d.]+:(\d+)", line):
                self.http_port = int(m.group(1))
        return any("mailgate: state in" in line for line in list(self.lines))

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs mounted at PATH, for a disk that fills up on demand; skips the test where
    mounting is not permitted (not root, or no CAP_SYS_ADMIN)."""
    import pytest

    path.mkdir(exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(path: Path) -> None:
    """Append to the file PATH until its file system is full."""
    with open(path, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def send(port: int, raw: bytes, sender: str = "alice@acme.example", recipients=(SUPPORT,)) -> dict:
    """Send RAW over SMTP; returns smtplib's refused-recipients dict (empty: all accepted)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, list(recipients), raw)


def make_message(subject: str = "Printer on fire", body: str = "Please help.",
                 sender: str = "Alice Adams <alice@acme.example>", message_id: str | None = None,
                 extra_headers: dict | None = None) -> bytes:
    import email.policy
    import email.utils
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = SUPPORT
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="acme.example")
    for k, v in (extra_headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF, as mail travels


# --- raw SMTP/LMTP dialogs and CLI output --------------------------------------------------------


class LineClient:
    """A bare SMTP/LMTP client over loopback: one command, one reply read at a time, so a test
    can count replies (LMTP answers DATA once per recipient; smtplib reads only one)."""

    def __init__(self, port: int, timeout: float = 30.0):
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, list[str]]:
        """One reply: its code and its lines (a multi-line reply has several)."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("connection closed; replies so far: %r" % lines)
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]), lines

    def command(self, line: str) -> tuple[int, list[str]]:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def send_data(self, raw: bytes) -> None:
        """The message after a 354: CRLF line ends, dot-stuffed, ended by a lone dot."""
        body = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        lines = [b"." + ln if ln.startswith(b".") else ln for ln in body.split(b"\r\n")[:-1]]
        self.sock.sendall(b"\r\n".join(lines) + b"\r\n.\r\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> "LineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cli_json(cli, *args: str):
    """The JSON document a `cli` (in-process) command printed; fails on a non-zero exit."""
    import json

    code, out, err = cli(*args, "--json")
    assert code == 0, (args, code, err)
    return json.loads(out)


def add_customer(cli, email: str = "alice@acme.example", name: str = "Alice Adams", org: str = "Acme") -> None:
    """An organisation (if new) and an active contact in it, through the in-process `cli`."""
    code, _, err = cli("org", "add", org)
    assert code == 0 or "exists" in err, err
    code, _, err = cli("contact", "add", email, "--name", name, "--org", org)
    assert code == 0, err


def spool_files(state_dir: Path) -> dict[str, list[str]]:
    """What lies in each spool directory of STATE_DIR."""
    spool = Path(state_dir) / "spool"
    return {d: sorted(os.listdir(spool / d)) if (spool / d).is_dir() else [] for d in ("tmp", "new", "cur")}


def crlf(raw: bytes) -> bytes:
    """RAW with CRLF line ends, as SMTP carries it. (smtplib sends bytes as they are: with bare
    LFs the whole message reads as one line on the wire, which a size or line limit then sees.)"""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
