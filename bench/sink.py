"""The floor for durable intake in Python here: a minimal aiosmtpd server that writes each
message to its own file, fsyncs the file and its directory, and only then answers 250.

    .venv/bin/python -m bench.sink --dir /tmp/sink [--port 0]

Prints `sink: listening on 127.0.0.1:PORT` once bound; SIGTERM/SIGINT stop it. The blocking
write runs in a worker thread (asyncio.to_thread), as mailgate's spool write does, so several
connections can have an fsync in flight at once. No recipient checks, no parsing, no database.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
from pathlib import Path

from aiosmtpd.smtp import SMTP

_seq = itertools.count()


def store(directory: Path, data: bytes) -> None:
    path = directory / f"{os.getpid()}-{next(_seq):09d}.eml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Handler:
    def __init__(self, directory: Path):
        self.directory = directory

    async def handle_DATA(self, server, session, envelope):
        try:
            await asyncio.to_thread(store, self.directory, envelope.original_content)
        except OSError:
            return "451 4.3.0 Cannot store the message now"
        return "250 2.0.0 Stored"


async def serve(directory: Path, host: str, port: int, max_size: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    handler = Handler(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=max_size, enable_SMTPUTF8=True, decode_data=False,
                     hostname="sink.bench.example", ident="bench-sink"),
        host=host, port=port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"sink: listening on {bound[0]}:{bound[1]}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="where the messages are written")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument("--max-size", type=int, default=64 * 1024 * 1024)
    args = p.parse_args()
    asyncio.run(serve(Path(args.dir), args.host, args.port, args.max_size))


if __name__ == "__main__":
    main()
