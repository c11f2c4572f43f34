"""A real daemon (listeners, processor) on its own event loop in a thread of the test process.

Starting a process costs a second; this costs milliseconds, so tests that need a fresh world
per case (the fixture corpus) can still go through the real SMTP listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from mailgate.app import App
from mailgate.serve.daemon import Daemon
from tests.support import wait_for


@contextlib.contextmanager
def running_daemon(app: App):
    """Yield the Daemon once its SMTP listener is bound; stop it on exit."""
    loop = asyncio.new_event_loop()
    holder: dict = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        daemon = Daemon(app)
        holder["daemon"] = daemon
        holder["code"] = loop.run_until_complete(daemon.run())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: holder.get("daemon") and holder["daemon"].servers, message="listener bound")
    daemon = holder["daemon"]
    try:
        yield daemon
    finally:
        loop.call_soon_threadsafe(daemon.stopping.set)
        thread.join(30)
        loop.close()


def smtp_port(daemon: Daemon) -> int:
    return daemon.servers[0].sockets[0].getsockname()[1]


@contextlib.contextmanager
def running_http(app: App):
    """The daemon's HTTP side (health, metrics, links, the API) for APP, served on loopback by
    its own event loop in a thread of the test process; yields the port it listens on."""
    from mailgate.http import server as http_server

    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        holder["runner"] = loop.run_until_complete(http_server.start(app))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(30)
    runner = holder["runner"]
    try:
        yield runner.addresses[0][1]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
