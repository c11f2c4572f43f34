"""The budget of one message (SPEC §4.2 "Bounded work"), enforced from outside the code that
might blow it.

Python cannot stop a thread that is stuck in a C call (a regular expression holds the GIL),
so processing runs in a process of its own — a worker of the daemon (mailgate.serve.workers)
or a child that `mailgate deliver` forks (`run_bounded`) — and the process that waits for it
measures it:

- time: the CPU seconds the processing process spent since it took the message
  (`processing.budget_seconds`). CPU time, not wall time: waiting for the database or the disk
  costs none, so a slow or busy machine never turns into an overrun, and a runaway in C is
  counted as it runs. Over the budget, the process is killed (SIGKILL) and the message
  quarantined unparsed.
- memory: the processing process caps its own data segment (RLIMIT_DATA) at what it holds once
  it is ready plus `Budget.memory` (`processing.budget_memory_factor` × `smtp.max_message_size`
  plus a fixed margin): a runaway allocation raises MemoryError, and the message is quarantined
  at once (mailgate.core.runner).

A processing process also dies with its parent (PR_SET_PDEATHSIG), so nothing outlives the
daemon or `deliver`, not even a process stuck in C that would never read its EOF.

Every long-lived process gives memory back once it is done with a big message
(`release_memory_promptly`): glibc's malloc raises its mmap threshold after the first big
buffer is freed, and from then on keeps such buffers on its heap — a daemon that once received
a 25 MB message would hold that peak for ever.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import resource
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("mailgate.budget")

# Beyond the factor × the message size: thread stacks (8 MiB each, counted as data) and the
# database driver's buffers. 48 MiB, not more: at the defaults the daemon and a worker held at
# its cap peak at 288 MB together (bench.gateway_hostile, the `hog` failpoint; 304 MB with 64),
# under the 300 MB that hostile mail may cost; a 25 MB attachment needs 2.4 × its size.
MEMORY_MARGIN = 48 * 1024 * 1024
POLL_SECONDS = 0.05  # how often the waiting process looks at the CPU time spent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@dataclass(frozen=True)
class Budget:
    seconds: float  # CPU seconds one message may cost its process
    memory: int  # bytes of data the process may hold beyond what it holds when ready

    @classmethod
    def of(cls, config) -> "Budget":
        p = config.processing
        return cls(p.budget_seconds, p.budget_memory_factor * config.smtp.max_message_size + MEMORY_MARGIN)

    def describe_overrun(self) -> str:
        return f"over the processing budget: more than {self.seconds:g} CPU seconds"


def release_memory_promptly() -> None:
    """Buffers of 256 KiB and more from mmap (returned when freed), the heap trimmed past 1 MiB."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):  # not glibc: its own defaults
        pass


# --- in the processing process -------------------------------------------------------------


def limit_memory(extra: int) -> int | None:
    """Cap this process's data segment at what it holds now plus EXTRA bytes; the limit set,
    or None when it cannot be set (logged)."""
    limit = data_bytes() + extra
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (OSError, ValueError) as e:
        log.error("cannot limit the memory of processing (RLIMIT_DATA): %s", e)
        return None
    return limit


def data_bytes(pid: int | str = "self") -> int:
    """VmData of a process: what RLIMIT_DATA counts."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def die_with_parent() -> None:
    """Be SIGKILLed when the parent dies, also while stuck where no signal handler runs."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError) as e:  # not Linux: EOF on stdin still stops a worker
        log.warning("cannot ask to die with the parent process: %s", e)
        return
    if os.getppid() == 1:  # the parent died before we asked
        os._exit(1)


# --- in the waiting process ----------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds PID has spent (all its threads); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)


@dataclass
class Outcome:
    """What became of a function run by `run_bounded`: its VALUE, or why there is none."""

    value: object = None
    overrun: bool = False  # stopped: over the time budget
    died: str | None = None  # the process ended without a value (a signal, an exit code)
    cpu_seconds: float = 0.0


def run_bounded(func: Callable[[], object], budget: Budget) -> Outcome:
    """FUNC() in a forked child with the memory budget, stopped when it spends more than the
    time budget. FUNC's value must pickle. The caller must not hold database connections
    across the fork (dispose its engine first): the child opens its own."""
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(func, budget, write_end)
    os.close(write_end)
    try:
        return _wait(pid, read_end, budget)
    finally:
        os.close(read_end)


def _child(func: Callable[[], object], budget: Budget, write_end: int) -> None:
    code = 0
    try:
        die_with_parent()
        limit_memory(budget.memory)
        data = pickle.dumps(func())
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)
    except BaseException:  # whatever it was, the parent decides from the missing value
        logging.getLogger("mailgate").exception("processing failed in its own process")
        code = 70
    finally:
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, read_end: int, budget: Budget) -> Outcome:
    chunks: list[bytes] = []
    started = cpu_seconds(pid) or 0.0
    spent = 0.0
    open_ = True
    while open_:
        ready, _, _ = select.select([read_end], [], [], POLL_SECONDS)
        if ready:
            chunk = os.read(read_end, 1 << 16)
            chunks.append(chunk)
            open_ = bool(chunk)
        now = cpu_seconds(pid)
        if now is not None:
            spent = now - started
        if open_ and spent > budget.seconds:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return Outcome(overrun=True, cpu_seconds=spent)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and chunks:
        return Outcome(value=pickle.loads(b"".join(chunks)), cpu_seconds=spent)
    return Outcome(died=_status_text(status), cpu_seconds=spent)


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit code {os.WEXITSTATUS(status)}"
