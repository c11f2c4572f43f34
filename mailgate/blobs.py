"""Content-addressed files: attachment contents and raw messages, outside the database.

A blob is named by the sha256 of its bytes and stored as <root>/<first two hex>/<sha256>,
written with tmp + fsync + rename so a reader never sees half a file. The names are ours,
never the sender's, so no filename can escape the directory. The root may be shared storage
that several instances reach (SPEC §8, `storage.attachments_dir`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mailgate.core.durable import write_file


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def put(self, data: bytes) -> str:
        """Store DATA (once) and return its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        self.put_known(digest, data)
        return digest

    def put_known(self, digest: str, data: bytes) -> None:
        path = self.path(digest)
        if path.exists():
            return
        try:
            write_file(path, (data,))
        except FileNotFoundError:  # the first blob under its prefix: a mkdir only then, not each time
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(path, (data,))

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError("not a sha256 hex digest")
        return self.root / digest[:2] / digest

    def get(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()
