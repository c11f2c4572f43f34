"""The daemon's HTTP listener (aiohttp): health now; metrics, notification links and the
agent API join it as routes."""

from __future__ import annotations

from aiohttp import web

from mailgate.app import App
from mailgate.http import APP
from mailgate.db import run_blocking
from mailgate.http import api
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
    """200 when the database answers and the spool takes files; 503 naming what fails."""
    app: App = request.app[APP]
    checks = {"database": await run_blocking(_database_ok, app), "spool": await run_blocking(app.spool.writable)}
    ok = all(checks.values())
    body = {"status": "ok" if ok else "failing", **{k: "ok" if v else "failing" for k, v in checks.items()},
            "spool_depth": await run_blocking(app.spool.depth)}
    if request.app[MAILBOXES] is not None:
        # Reported, not judged: a mailbox the daemon cannot reach does not make the daemon unhealthy.
        body["imap"] = request.app[MAILBOXES].report()
    if app.oauth.keepers:
        body["oauth"] = app.oauth.health()  # reported like the mailboxes: one account's trouble is its own
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition: messages by outcome, processing time, spool and outbox depth."""
    app: App = request.app[APP]
    body = await run_blocking(app.metrics.render)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _database_ok(app: App) -> bool:
    try:
        app.db.ping()
        return True
    except Exception:
        return False


async def start(app: App, mailboxes=None) -> web.AppRunner:
    runner = web.AppRunner(application(app, mailboxes), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, app.config.http.host, app.config.http.port)
    await site.start()
    return runner
