"""Files that are either wholly there or not at all: tmp + fsync + rename + fsync of the
directory (Mailman's switchboard). The spool, the blob store, the outbox Maildir and kept
secrets all write this way, so a crash at any moment leaves no half-written file behind."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable


def write_file(path: Path, chunks: Iterable[bytes], mode: int = 0o644) -> None:
    """Write CHUNKS to PATH durably (via a temporary file beside it). Raises OSError; then
    nothing is left behind."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    write_tmp(tmp, chunks, mode)
    commit(tmp, path)


def write_tmp(tmp: Path, chunks: Iterable[bytes], mode: int = 0o644) -> None:
    """Write and fsync TMP, the first half of `write_file` (the spool renames it itself)."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        unlink_quietly(tmp)
        raise


def commit(tmp: Path, final: Path) -> None:
    """Rename TMP to FINAL and fsync FINAL's directory; on failure neither file is left."""
    try:
        os.rename(tmp, final)
    except BaseException:
        unlink_quietly(tmp)
        raise
    try:
        fsync_dir(final.parent)
    except BaseException:
        # Not durable, so not there: whoever wrote it keeps its own copy and tries again.
        unlink_quietly(final)
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    """Remove PATH if it is there. Used on the way out of an error (the original error is the
    one to report) and for files that may already be gone."""
    try:
        os.unlink(path)
    except OSError:
        pass


def create_file(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Write PATH durably unless it exists; False when it did (another process made it first:
    of two racing creators exactly one wins, and nobody ever reads a half-written file)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    write_tmp(tmp, (data,), mode)
    try:
        os.link(tmp, path)  # fails if PATH exists, unlike rename
    except FileExistsError:
        return False
    finally:
        unlink_quietly(tmp)
    fsync_dir(path.parent)
    return True
