"""The daemon's HTTP listener (aiohttp): health now; metrics, notification links and the
agent API join it as routes."""

from __future__ import annotations

from aiohttp import web

from mailgate.app import App
from mailgate.db import run_blocking


def application(app: App) -> web.Application:
    web_app = web.Application()
    web_app["mailgate"] = app
    web_app.router.add_get("/healthz", healthz)
    return web_app


async def healthz(request: web.Request) -> web.Response:
    """200 when the database answers and the spool takes files; 503 naming what fails."""
    app: App = request.app["mailgate"]
    checks = {"database": await run_blocking(_database_ok, app), "spool": await run_blocking(app.spool.writable)}
    ok = all(checks.values())
    body = {"status": "ok" if ok else "failing", **{k: "ok" if v else "failing" for k, v in checks.items()},
            "spool_depth": await run_blocking(app.spool.depth)}
    return web.json_response(body, status=200 if ok else 503)


def _database_ok(app: App) -> bool:
    try:
        app.db.ping()
        return True
    except Exception:
        return False


async def start(app: App) -> web.AppRunner:
    runner = web.AppRunner(application(app), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, app.config.http.host, app.config.http.port)
    await site.start()
    return runner
