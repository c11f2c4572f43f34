"""The durable spool: every inbound path stores the raw message here before it says yes.

Layout (one spool per instance, under <state_dir>/spool):

    tmp/   being written; never read
    new/   durable and waiting for the pipeline
    cur/   claimed by a runner, which holds an flock on the file while it works
    bad/   files that cannot be read as a spool file (damaged, or not ours): set aside for the
           operator instead of stopping the runner on every try

A message is written to tmp/, fsynced, renamed into new/ (or straight into cur/ for the pipe
path, which processes it itself), and the directory is fsynced: only then is it
acknowledged. What becomes of a claimed message is one `Disposition`, applied by `settle` —
the only place that moves or removes a claimed file. A file in cur/ that nobody holds a lock
on belongs to a runner that died: `recover` settles it as RETRY (Mailman's .bak files), and
the worker pool settles the message its dead worker held as DIED; after a few deaths the
runner quarantines it unparsed (mailgate.core.runner). A message whose worker the pool killed
for overrunning the processing budget is taken from cur/ by the pool (`take_orphan`) and
decided by the runner like any other.

Each file holds one JSON line (the envelope and its counters) followed by the raw bytes.
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from mailgate.core.durable import commit, fsync_dir, unlink_quietly, write_tmp

log = logging.getLogger("mailgate.spool")

_COPY_PIECE = 1024 * 1024
STALE_TMP_SECONDS = 3600  # a tmp/ file is written in milliseconds; one this old lost its writer


class SpoolError(OSError):
    """The spool cannot take the message (disk full, permissions, I/O error)."""


class Disposition(enum.Enum):
    """What becomes of a claimed message's file (`Spool.settle`)."""

    DONE = "done"  # its outcome is committed (quarantined included): the file goes
    RETRY = "retry"  # processing failed: back into new/, one attempt counted
    DEFER = "defer"  # older mail must go first: back into new/, one deferral counted
    DIED = "died"  # the worker process holding it died: back into new/, one death counted
    ALONE = "alone"  # it overran its budget next to other messages: back, to be worked alone next
    WAIT = "wait"  # not now, through no fault of its own (database away, shutdown): back, uncounted
    LEAVE = "leave"  # not even its failure could be recorded: left in cur/ for the orphan scan


_COUNTERS = {Disposition.RETRY: "attempts", Disposition.DEFER: "deferrals", Disposition.DIED: "deaths",
             Disposition.ALONE: "overruns"}


@dataclass
class Envelope:
    sender: str | None  # envelope sender; "" is the null sender, None unknown
    recipients: list[str]
    source: str = "smtp"  # smtp, lmtp, imap, pipe
    received_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    attempts: int = 0  # failed processing attempts
    deaths: int = 0  # worker processes that died with this message in hand
    deferrals: int = 0  # times it was put back to let older mail go first
    overruns: int = 0  # times it overran its budget while other messages were worked beside it

    @property
    def alone(self) -> bool:
        """Whether it must be worked with no other message beside it in its process: it was in
        hand when a worker died, or overran a budget that a neighbour may have eaten."""
        return self.deaths > 0 or self.overruns > 0


@dataclass
class Claim:
    """A message a runner holds: the lock lives as long as the open file. A claim nobody was
    told 250 for (the pipe path, before its exit code) is not ACKNOWLEDGED: when it cannot be
    processed now, the sender keeps it and our copy goes."""

    spool_id: str
    path: Path
    envelope: Envelope
    raw: bytes
    _file: object = field(repr=False, default=None)
    acknowledged: bool = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # releases the flock
            self._file = None


class Spool:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp, self.new, self.cur = (self.root / d for d in ("tmp", "new", "cur"))

    def ensure(self) -> None:
        """Create what is missing; something broken in the way is left for the writers to
        report (451 on SMTP, 75 from deliver), so commands that only read still work."""
        for d in (self.tmp, self.new, self.cur):
            if not d.exists():
                d.mkdir(parents=True, exist_ok=True)

    # --- writing -----------------------------------------------------------------------

    def put(self, raw: bytes, envelope: Envelope) -> str:
        """Store a message durably in new/; returns its spool id. Raises SpoolError."""
        spool_id = _new_id()
        tmp = self._write_tmp(spool_id, raw, envelope)
        self._commit(tmp, self.new / spool_id)
        return spool_id

    def put_claimed(self, raw: bytes, envelope: Envelope) -> Claim:
        """Store a message durably straight into cur/, already claimed by the caller and not
        yet acknowledged to its sender."""
        spool_id = _new_id()
        tmp = self._write_tmp(spool_id, raw, envelope)
        try:
            f = open(tmp, "rb")
        except OSError as e:
            unlink_quietly(tmp)
            raise _spool_error("write", e) from e
        try:
            fcntl.flock(f, fcntl.LOCK_EX)  # held before the file appears in cur/
            self._commit(tmp, self.cur / spool_id)
        except BaseException:
            f.close()
            raise
        return Claim(spool_id, self.cur / spool_id, envelope, raw, f, acknowledged=False)

    def draft(self, envelope: Envelope, copies: Sequence[Envelope] = ()) -> "Draft":
        """A message to be written piece by piece as it arrives (`Draft`), stored under
        ENVELOPE and once more under each of COPIES."""
        return Draft(self, envelope, copies)

    def _write_tmp(self, spool_id: str, raw: bytes, envelope: Envelope) -> Path:
        path = self.tmp / spool_id
        try:
            write_tmp(path, (_header(envelope), raw))
        except OSError as e:
            raise _spool_error("write", e) from e
        return path

    def _commit(self, tmp: Path, final: Path) -> None:
        try:
            commit(tmp, final)
        except OSError as e:
            raise _spool_error("commit", e) from e

    # --- claiming and settling ----------------------------------------------------------

    def waiting(self) -> list[str]:
        """Spool ids in new/, oldest first (ids start with the receive time)."""
        return sorted(_listdir(self.new))

    def claim(self, spool_id: str) -> Claim | None:
        """Take one message from new/ into cur/; None when another runner was faster."""
        src = self.new / spool_id
        try:
            f = open(src, "rb")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The lock is on the inode we opened; another claimer may have moved that one and
            # put a rewritten file (settle) under the same name meanwhile: only move ours.
            if not _same_file(f, src):
                f.close()
                return None
            os.rename(src, self.cur / spool_id)
        except OSError:  # locked by another claimer, or already moved by it
            f.close()
            return None
        try:
            return self._read_claim(spool_id, self.cur / spool_id, f)
        except MemoryError:  # this process has no room for it (a worker's limit): back, uncounted
            os.rename(self.cur / spool_id, src)
            raise

    def settle(self, claim: Claim, disposition: Disposition) -> None:
        """Apply DISPOSITION to a claimed message, and let go of it."""
        try:
            if disposition is Disposition.DONE or not claim.acknowledged:
                unlink_quietly(claim.path)
            elif disposition is not Disposition.LEAVE:
                self._put_back(claim, _COUNTERS.get(disposition))
        finally:
            claim.close()

    def _put_back(self, claim: Claim, counter: str | None) -> None:
        if counter:
            setattr(claim.envelope, counter, getattr(claim.envelope, counter) + 1)
            try:
                self._rewrite_header(claim)
            except OSError:
                pass  # cannot rewrite (disk full?): put it back uncounted rather than not at all
        os.rename(claim.path, self.new / claim.spool_id)
        fsync_dir(self.new)

    def has_older(self, spool_id: str) -> bool:
        """Whether a message that arrived before SPOOL_ID still waits or is being worked."""
        return any(name < spool_id for name in (*_listdir(self.new), *_listdir(self.cur)))

    def _rewrite_header(self, claim: Claim) -> None:
        tmp = self._write_tmp(claim.spool_id, claim.raw, claim.envelope)
        try:
            os.rename(tmp, claim.path)  # the new inode is unlocked, the old file stays held
        except OSError:
            unlink_quietly(tmp)
            raise
        fsync_dir(claim.path.parent)

    # --- recovery and inspection -------------------------------------------------------

    def recover(self, min_age: float = 0) -> int:
        """Settle orphaned cur/ files (no lock held: their runner died) as RETRY; remove tmp/
        files a killed writer left (never acknowledged, so nobody waits for them)."""
        now = time.time()
        for name in _listdir(self.tmp):
            path = self.tmp / name
            try:
                if now - path.stat().st_mtime > STALE_TMP_SECONDS:
                    path.unlink()
            except OSError:
                pass
        return sum(self._recover(name, min_age, now, Disposition.RETRY) for name in _listdir(self.cur))

    def note_death(self, spool_id: str, disposition: Disposition = Disposition.DIED) -> bool:
        """The worker process that held SPOOL_ID died: settle it as DIED (or DISPOSITION);
        False when it is not orphaned in cur/, e.g. it was finished after all."""
        return self._recover(spool_id, 0, time.time(), disposition)

    def take_orphan(self, spool_id: str, min_age: float = 0, now: float | None = None) -> Claim | None:
        """Claim SPOOL_ID where it lies in cur/, when nobody holds it (its runner died)."""
        path = self.cur / spool_id
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return None
        try:
            if (now or time.time()) - os.fstat(f.fileno()).st_ctime < min_age:
                raise _Busy()
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: a live runner holds it
            if not _same_file(f, path):
                raise _Busy()  # settled or recovered by someone else meanwhile
        except (OSError, _Busy):
            f.close()
            return None
        return self._read_claim(spool_id, path, f)

    def _recover(self, name: str, min_age: float, now: float, disposition: Disposition) -> bool:
        claim = self.take_orphan(name, min_age, now)
        if claim is None:
            return False
        self.settle(claim, disposition)
        return True

    def _read_claim(self, spool_id: str, path: Path, f) -> Claim | None:
        """The claim of the locked file F at PATH; None when it is unreadable (set aside)."""
        try:
            envelope, raw = _read(f)
        except UnreadableSpoolFile as e:
            self._set_aside(path, e)
            f.close()
            return None
        except BaseException:
            f.close()
            raise
        return Claim(spool_id, path, envelope, raw, f)

    def _set_aside(self, path: Path, error: Exception) -> None:
        bad = self.root / "bad"
        try:
            bad.mkdir(exist_ok=True)
            os.rename(path, bad / path.name)
        except OSError as e:
            log.error("unreadable spool file %s (%s); cannot move it to %s: %s", path, error, bad, e.strerror)
            return
        log.error("unreadable spool file %s (%s): moved to %s", path.name, error, bad)

    def depth(self) -> int:
        return len(_listdir(self.new)) + len(_listdir(self.cur))

    def probe(self) -> None:
        """Prove that a message could be stored and found now (for /healthz): the way a
        message takes — written and fsynced in tmp/, renamed into new/, the directory fsynced
        — with a probe file no runner takes for mail (dot files are not listed), and both
        new/ and cur/ listed. Raises SpoolError naming the directory at fault."""
        name = f".probe-{uuid.uuid4().hex}"
        step, where = "write", self.tmp
        try:
            write_tmp(self.tmp / name, (b"probe\n",))
            step, where = "write", self.new
            commit(self.tmp / name, self.new / name)
            unlink_quietly(self.new / name)
            for where in (self.new, self.cur):
                step = "read"
                os.listdir(where)
        except OSError as e:
            unlink_quietly(self.tmp / name)
            raise SpoolError(e.errno, f"cannot {step} {where.relative_to(self.root.parent)}: "
                                      f"{e.strerror or e}") from None


class Draft:
    """A message written into tmp/ as it arrives, so that a big one is never held whole (the
    SMTP listener's DATA); `commit` makes it durable in new/ as `Spool.put` does — once per
    envelope, when COPIES has more (one per desk). Blocking: the listener calls each step in a
    thread. A failed step leaves nothing of this draft behind."""

    def __init__(self, spool: Spool, envelope: Envelope, copies: Sequence[Envelope] = ()):
        self.spool, self.envelope, self.copies = spool, envelope, list(copies)
        self.spool_id = _new_id()
        self.path = spool.tmp / self.spool_id
        self._file = None
        self.failed: SpoolError | None = None  # a piece its writer could not write (then: 451)

    def write(self, chunk: bytes) -> None:
        """Append CHUNK. Raises SpoolError (the draft is discarded)."""
        try:
            if self._file is None:
                self._file = open(self.path, "wb")
                self._file.write(_header(self.envelope))
            self._file.write(chunk)
        except OSError as e:
            self.discard()
            raise _spool_error("write", e) from e

    def commit(self, last: bytes = b"") -> list[str]:
        """Append LAST, fsync, and move into new/ (the directory fsynced) under the envelope
        and each of the copies'; their spool ids. Raises SpoolError (the draft is discarded; a
        copy stored before the failure stays)."""
        self.write(last)
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            copies = [self._copy(envelope) for envelope in self.copies]
        except OSError as e:
            self.discard()
            raise _spool_error("write", e) from e
        self.spool._commit(self.path, self.spool.new / self.spool_id)
        return [self.spool_id, *copies]

    def _copy(self, envelope: Envelope) -> str:
        """The body, read back in pieces, stored once more under ENVELOPE; its spool id."""
        copy = Draft(self.spool, envelope)
        with open(self.path, "rb") as f:
            f.readline()  # our envelope
            while piece := f.read(_COPY_PIECE):
                copy.write(piece)
        return copy.commit()[0]

    def discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        unlink_quietly(self.path)


class _Busy(Exception):
    """A cur/ file that is not an orphan (too young, or not the file we opened)."""


def _spool_error(step: str, e: OSError) -> SpoolError:
    if isinstance(e, SpoolError):
        return e
    return SpoolError(e.errno, f"spool {step} failed: {e.strerror}")


def _new_id() -> str:
    # Time first so that a listing sorts in arrival order; the uuid makes it unique everywhere.
    return f"{time.time_ns():020d}-{uuid.uuid4().hex}"


def _header(envelope: Envelope) -> bytes:
    return json.dumps(asdict(envelope), separators=(",", ":")).encode() + b"\n"


class UnreadableSpoolFile(ValueError):
    """A file in the spool without a valid envelope line."""


def _read(f) -> tuple[Envelope, bytes]:
    f.seek(0)
    head = f.readline()
    # Read at once into a buffer of its size: read() of all, or the file sliced, would hold a
    # big message twice for a moment.
    raw = f.read(max(os.fstat(f.fileno()).st_size - f.tell(), 0))
    try:
        fields = json.loads(head)
        envelope = Envelope(**fields)
    except (ValueError, TypeError) as e:
        raise UnreadableSpoolFile(f"no valid envelope: {type(e).__name__}") from None
    if not isinstance(envelope.recipients, list) or not isinstance(envelope.attempts, int):
        raise UnreadableSpoolFile("no valid envelope: wrong field types")
    return envelope, raw


def read_file(path: Path) -> tuple[Envelope, bytes]:
    with open(path, "rb") as f:
        return _read(f)


def _listdir(path: Path) -> list[str]:
    """The spool files in PATH; names starting with a dot are not ours (probes, editors)."""
    try:
        return [name for name in os.listdir(path) if not name.startswith(".")]
    except FileNotFoundError:
        return []


def _same_file(f, path: Path) -> bool:
    """Whether PATH still names the file F has open."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
