"""The durable spool: every inbound path stores the raw message here before it says yes.

Layout (one spool per instance, under <state_dir>/spool):

    tmp/   being written; never read
    new/   durable and waiting for the pipeline
    cur/   claimed by a processor, which holds an flock on the file while it works
    bad/   files that cannot be read as a spool file (damaged, or not ours): set aside for the
           operator instead of stopping the processor on every try

A message is written to tmp/, fsynced, renamed into new/ (or straight into cur/ for the
pipe path, which processes it itself), and the directory is fsynced: only then is it
acknowledged. A file in cur/ that nobody holds a lock on belongs to a processor that died;
`recover` puts it back into new/ and counts the attempt (Mailman's .bak files). A death alone
never quarantines a message, though: a SIGKILL from outside (an operator, the OOM killer, a
watchdog) cannot be told from one the message caused, and it hits whatever is in flight —
right after a restart, the same recovered messages again (tests/test_kill.py).

Each file holds one JSON line (the envelope and the attempt count) followed by the raw bytes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mailgate.models import utcnow

log = logging.getLogger("mailgate.spool")

ORPHAN_AGE_SECONDS = 30  # a cur/ file younger than this may be in the middle of a claim
STALE_TMP_SECONDS = 3600  # a tmp/ file is written in milliseconds; one this old lost its writer


class SpoolError(OSError):
    """The spool cannot take the message (disk full, permissions, I/O error)."""


@dataclass
class Envelope:
    sender: str | None  # envelope sender; "" is the null sender, None unknown
    recipients: list[str]
    source: str = "smtp"  # smtp, lmtp, imap, pipe
    received_at: str = field(default_factory=lambda: utcnow().isoformat())
    attempts: int = 0
    deaths: int = 0  # processing worker processes that died with this message in hand
    deferrals: int = 0  # times it was put back to let older mail go first (mailgate.processor)


@dataclass
class Claim:
    """A message a processor holds: the lock lives as long as the open file."""

    spool_id: str
    path: Path
    envelope: Envelope
    raw: bytes
    _file: object = field(repr=False, default=None)

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
        """Store a message durably straight into cur/, already claimed by the caller."""
        spool_id = _new_id()
        tmp = self._write_tmp(spool_id, raw, envelope)
        try:
            f = open(tmp, "rb")
        except OSError as e:
            _unlink_quietly(tmp)
            raise SpoolError(e.errno, f"spool write failed: {e.strerror}") from e
        try:
            fcntl.flock(f, fcntl.LOCK_EX)  # held before the file appears in cur/
            self._commit(tmp, self.cur / spool_id)
        except OSError as e:
            f.close()
            _unlink_quietly(tmp)
            if isinstance(e, SpoolError):
                raise
            raise SpoolError(e.errno, f"spool write failed: {e.strerror}") from e
        except BaseException:
            f.close()
            raise
        return Claim(spool_id, self.cur / spool_id, envelope, raw, f)

    def _write_tmp(self, spool_id: str, raw: bytes, envelope: Envelope) -> Path:
        path = self.tmp / spool_id
        try:
            with open(path, "wb") as f:
                f.write(_header(envelope))
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            _unlink_quietly(path)
            raise SpoolError(e.errno, f"spool write failed: {e.strerror}") from e
        return path

    def _commit(self, tmp: Path, final: Path) -> None:
        try:
            os.rename(tmp, final)
        except OSError as e:
            _unlink_quietly(tmp)
            raise SpoolError(e.errno, f"spool commit failed: {e.strerror}") from e
        try:
            _fsync_dir(final.parent)
        except OSError as e:
            # Not durable, so not acknowledged: take it back, the sender keeps it and retries.
            _unlink_quietly(final)
            raise SpoolError(e.errno, f"spool commit failed: {e.strerror}") from e

    # --- claiming ----------------------------------------------------------------------

    def waiting(self) -> list[str]:
        """Spool ids in new/, oldest first (ids start with the receive time)."""
        try:
            return sorted(os.listdir(self.new))
        except FileNotFoundError:
            return []

    def claim(self, spool_id: str) -> Claim | None:
        """Take one message from new/ into cur/; None when another processor was faster."""
        src = self.new / spool_id
        try:
            f = open(src, "rb")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The lock is on the inode we opened; another claimer may have moved that one and
            # put a rewritten file (release) under the same name meanwhile: only move ours.
            if not _same_file(f, src):
                f.close()
                return None
            os.rename(src, self.cur / spool_id)
        except OSError:  # locked by another claimer, or already moved by it
            f.close()
            return None
        try:
            envelope, raw = _read(f)
        except UnreadableSpoolFile as e:
            self._set_aside(self.cur / spool_id, e)
            f.close()
            return None
        except BaseException:
            f.close()
            raise
        return Claim(spool_id, self.cur / spool_id, envelope, raw, f)

    def done(self, claim: Claim) -> None:
        """The message is processed and committed: forget it."""
        _unlink_quietly(claim.path)
        claim.close()

    def release(self, claim: Claim, count_attempt: bool = True, rewrite: bool = False) -> None:
        """Put a claimed message back into new/ to be tried again (its envelope rewritten when
        an attempt is counted or REWRITE says the caller changed it)."""
        try:
            if count_attempt:
                claim.envelope.attempts += 1
            if count_attempt or rewrite:
                try:
                    self._rewrite_header(claim)
                except OSError:
                    pass  # cannot rewrite (disk full?): put it back uncounted rather than not at all
            os.rename(claim.path, self.new / claim.spool_id)
            _fsync_dir(self.new)
        finally:
            claim.close()

    def has_older(self, spool_id: str) -> bool:
        """Whether a message that arrived before SPOOL_ID still waits or is being worked."""
        return any(name < spool_id for name in (*_listdir(self.new), *_listdir(self.cur)))

    def _rewrite_header(self, claim: Claim) -> None:
        tmp = self._write_tmp(claim.spool_id, claim.raw, claim.envelope)
        try:
            os.rename(tmp, claim.path)  # the new inode is unlocked, the old file stays held
        except OSError:
            _unlink_quietly(tmp)
            raise
        _fsync_dir(claim.path.parent)

    # --- recovery and inspection -------------------------------------------------------

    def recover(self, min_age: float = 0) -> int:
        """Return orphaned cur/ files (no lock held) to new/, counting an attempt each; remove
        tmp/ files a killed writer left (never acknowledged, so nobody waits for them)."""
        recovered = 0
        now = time.time()
        for name in _listdir(self.tmp):
            path = self.tmp / name
            try:
                if now - path.stat().st_mtime > STALE_TMP_SECONDS:
                    path.unlink()
            except OSError:
                pass
        for name in _listdir(self.cur):
            recovered += self._recover(name, min_age, now)
        return recovered

    def note_death(self, spool_id: str) -> bool:
        """The worker process that held SPOOL_ID died: count it and put the message back into
        new/ (False when it is not orphaned in cur/, e.g. it was finished after all)."""
        return bool(self._recover(spool_id, 0, time.time(), death=True))

    def _recover(self, name: str, min_age: float, now: float, death: bool = False) -> int:
        """Return one orphaned cur/ file to new/, counting an attempt (or a death); 1 if done."""
        path = self.cur / name
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return 0
        with f:
            if now - os.fstat(f.fileno()).st_ctime < min_age:
                return 0
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # a live processor holds it
            if not _same_file(f, path):
                return 0  # released or recovered by someone else meanwhile
            try:
                envelope, raw = _read(f)
            except UnreadableSpoolFile as e:
                self._set_aside(path, e)
                return 0
            if death:
                envelope.deaths += 1
            self.release(Claim(name, path, envelope, raw, None), count_attempt=not death, rewrite=death)
            return 1

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

    def writable(self) -> bool:
        """Whether a message could be stored now (for /healthz)."""
        probe = self.tmp / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError:
            return False


def _new_id() -> str:
    # Time first so that a listing sorts in arrival order; the uuid makes it unique everywhere.
    return f"{time.time_ns():020d}-{uuid.uuid4().hex}"


def _header(envelope: Envelope) -> bytes:
    return json.dumps(asdict(envelope), separators=(",", ":")).encode() + b"\n"


class UnreadableSpoolFile(ValueError):
    """A file in the spool without a valid envelope line."""


def _read(f) -> tuple[Envelope, bytes]:
    f.seek(0)
    data = f.read()
    head, _, raw = data.partition(b"\n")
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
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


def _unlink_quietly(path: Path) -> None:
    """Remove PATH if it is there. Used on the way out of an error (the original error is the
    one to report: a tmp/ that is no directory any more must give SpoolError, not ENOTDIR from
    the clean-up) and for files that may already be gone."""
    try:
        os.unlink(path)
    except OSError:
        pass
