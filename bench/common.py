"""What every benchmark needs: temp dirs, config files, databases, a `mailgate serve` child,
read-only database counts, /proc readings, percentiles and the report.

Nothing here imports from tests/ (the benchmarks must run without the test suite); the ideas
of tests/support.py (write_config, DaemonProcess) are repeated in small.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parent.parent
SUPPORT = "support@example.com"
SECRET = "bench-secret-not-for-production"
PG_ADMIN = os.environ.get("MAILGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# Rate limits high instead of 0: they never trigger, but their queries still run, as in
# production (0 would skip the query and hide what it costs on a big database).
NO_LIMIT = 1_000_000

_children: list[subprocess.Popen] = []


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- processes we started: always cleaned up ----------------------------------------------------


def _kill_children() -> None:
    for proc in list(_children):
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(10)
            except Exception:
                pass


atexit.register(_kill_children)


def _on_signal(signum, _frame):
    _kill_children()
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)


# --- places and config ---------------------------------------------------------------------------


@contextmanager
def temp_dir(prefix: str, keep: bool = False):
    path = Path(tempfile.mkdtemp(prefix=f"mailgate-bench-{prefix}-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(workdir: Path, database_url: str, *, smtp_port: int = 0, max_message_size: int | None = None,
                 log_level: str = "WARNING", extra: dict | None = None) -> Path:
    smtp = {"host": "127.0.0.1", "port": smtp_port, "hostname": "mailgate.bench.example"}
    if max_message_size:
        smtp["max_message_size"] = max_message_size
        smtp["max_bytes_in_flight"] = max(max_message_size, 50 * 1024 * 1024)  # at least one message
    data = {
        "database": {"url": database_url},
        "storage": {"state_dir": str(workdir / "state")},
        "smtp": smtp,
        "http": {"enabled": False},
        "tickets": {"key_prefix": "SD", "support_addresses": [SUPPORT]},
        "security": {"secret": SECRET},
        "policy": {"max_new_tickets_per_sender_per_hour": NO_LIMIT},
        "outbound": {"max_per_recipient_per_hour": NO_LIMIT},
        "logging": {"level": log_level},
    }
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    path = workdir / "mailgate.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def sqlite_url(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'state' / 'mailgate.db').resolve()}"


def mailgate_cmd() -> list[str]:
    script = Path(sys.executable).parent / "mailgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mailgate"]


def cli(config: Path, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*mailgate_cmd(), "--config", str(config), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise RuntimeError(f"mailgate {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


# --- PostgreSQL -----------------------------------------------------------------------------------


def pg_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"


def pg_create(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_url(name)


def pg_drop(name: str) -> None:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as e:  # report, but do not hide the benchmark's own error
        log(f"could not drop database {name}: {e}")


@contextmanager
def database(kind: str, workdir: Path, tag: str, keep: bool = False):
    """A fresh, empty database of KIND ('sqlite' or 'postgresql'); yields its URL; removed after
    (unless KEEP)."""
    if kind == "sqlite":
        yield sqlite_url(workdir)
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database kind {kind!r}")
    name = f"mailgate_bench_{tag}_{os.getpid()}"
    url = pg_create(name)
    try:
        yield url
    finally:
        if keep:
            log(f"kept database {name}")
        else:
            pg_drop(name)


def driver_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class Reader:
    """Read-only counts straight from the database, while mailgate writes it."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1]
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            self.is_sqlite = True
        else:
            import psycopg

            self.conn = psycopg.connect(driver_url(url), autocommit=True, connect_timeout=10)
            self.conn.execute("SET default_transaction_read_only = on")
            self.is_sqlite = False
        self.lock = threading.Lock()

    def scalar(self, sql: str):
        with self.lock:
            return self.conn.execute(sql).fetchone()[0]

    def rows(self, sql: str) -> list[tuple]:
        with self.lock:
            return list(self.conn.execute(sql).fetchall())

    def count(self, table: str) -> int:
        return self.scalar(f"SELECT COUNT(*) FROM {table}")

    def by(self, table: str, column: str) -> dict[str, int]:
        return dict(self.rows(f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column} ORDER BY 1"))

    def close(self) -> None:
        self.conn.close()


# --- a running `mailgate serve` -------------------------------------------------------------------


class Serve:
    """`mailgate --config X serve` as a child; its announced SMTP port is parsed."""

    def __init__(self, config: Path):
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.smtp_port: int | None = None

    def start(self, timeout: float = 60) -> "Serve":
        self.proc = subprocess.Popen(
            [*mailgate_cmd(), "--config", str(self.config), "serve"], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        _children.append(self.proc)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mailgate serve exited at start:\n" + self.output())
            for line in list(self.lines):
                if m := re.search(r"mailgate: (?:SMTP|LMTP) on [\d.]+:(\d+)", line):
                    self.smtp_port = int(m.group(1))
            if self.smtp_port and any("mailgate: state in" in line for line in list(self.lines)):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mailgate serve did not announce itself within {timeout}s:\n" + self.output())

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if len(self.lines) > 5000:
                del self.lines[:1000]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self, last: int = 40) -> str:
        return "".join(self.lines[-last:])

    def status(self, key: str) -> int:
        """A /proc/PID/status value in bytes (VmRSS, VmHWM), summed over serve and its worker
        processes ([processing] processes > 1): for VmHWM an upper bound of the peak of the sum."""
        return sum(proc_status(pid, key) for pid in [self.pid, *children(self.pid)])

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log("mailgate serve did not stop on SIGTERM; killed")
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self.proc in _children:
            _children.remove(self.proc)


def children(pid: int) -> list[int]:
    """The PIDs whose parent is PID."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux: `echo 5 > /proc/PID/clear_refs`)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """VmRSS of PID every INTERVAL seconds, in a thread: [(seconds since start, bytes, extra())]."""

    def __init__(self, pid: int, interval: float = 1.0, extra=None):
        self.pid, self.interval, self.extra = pid, interval, extra
        self.samples: list[tuple[float, int, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def __enter__(self):
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                rss = proc_status(self.pid, "VmRSS")
            except (OSError, KeyError):
                return
            extra = None
            if self.extra:
                try:
                    extra = self.extra()
                except Exception:
                    extra = None
            self.samples.append((time.monotonic() - self.started, rss, extra))
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- figures and the report ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The P-th percentile (0..100), linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def mb(n_bytes: float) -> float:
    return n_bytes / (1024 * 1024)


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "loadavg_1m_at_start": load}


def table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for i, r in enumerate(cells):
        out.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}" if abs(value) < 10000 else f"{value:.0f}"
    return "-" if value is None else str(value)


def json_line(name: str, data: dict) -> str:
    return "BENCH_JSON " + json.dumps({"bench": name, **data}, sort_keys=True, default=str)
