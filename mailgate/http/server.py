"""The daemon's HTTP listener (aiohttp): /healthz, /metrics, the notification links and the
agents' API."""

from __future__ import annotations

from aiohttp import web

from mailgate.app import App
from mailgate.http import APP
from mailgate.db import run_blocking
from mailgate.http import api, health
from mailgate.http import links

MAILBOXES = web.AppKey("mailboxes", object)  # the daemon's IMAP pollers (ingest.imap.Pollers), if any


def application(app: App, mailboxes=None) -> web.Application:
    web_app = web.Application()
    web_app[APP] = app
    web_app[MAILBOXES] = mailboxes
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/metrics", metrics)
    api.routes(web_app)
    links.add_routes(web_app)  # /notifications/<token>: the signed on/off links
    return web_app


async def healthz(request: web.Request) -> web.Response:
    """200 when every promise holds (mailgate.http.health), else 503 naming what fails."""
    app: App = request.app[APP]
    body = await run_blocking(health.checks, app)
    if request.app[MAILBOXES] is not None:
        # Each mailbox is a promise too (SPEC §8): one that does not fetch makes the answer 503,
        # named `imap.<name>` in `problems`; the others are reported as they are.
        body["imap"] = request.app[MAILBOXES].report()
        body["problems"].update({f"imap.{name}": why for name, why in request.app[MAILBOXES].problems().items()})
        body["status"] = "failing" if body["problems"] else "ok"
    if app.oauth.keepers:
        body["oauth"] = app.oauth.health()  # reported like the mailboxes: one account's trouble is its own
    return web.json_response(body, status=200 if body["status"] == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition: messages by outcome, processing time, spool and outbox depth."""
    app: App = request.app[APP]
    body = await run_blocking(app.metrics.render)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def start(app: App, mailboxes=None) -> web.AppRunner:
    runner = web.AppRunner(application(app, mailboxes), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, app.config.http.host, app.config.http.port)
    await site.start()
    return runner
