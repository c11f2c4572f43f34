"""The signed notification links (SPEC §5): /notifications/<token>, no login.

GET shows a small page with the contact's current on/off state and a button; POST switches
(form field notify=on|off). A POST whose body is `List-Unsubscribe=One-Click` is the RFC 8058
one-click unsubscribe a mail client sends for the List-Unsubscribe header: it turns
notifications off. A token that is forged, or names a ticket or contact that is gone, gets
404 and changes nothing; one for a contact who may no longer see the ticket gets 403.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mailgate.app import App
from mailgate.contacts import find_contact
from mailgate.db import run_blocking
from mailgate.http import APP
from mailgate.notify import subscriptions, tokens
from mailgate.tickets import service

ONE_CLICK = ("List-Unsubscribe", "One-Click")
# The page's URL is the credential: keep it out of caches, Referer headers and search engines.
_PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


def add_routes(web_app: web.Application) -> None:
    web_app.router.add_get("/notifications/{token}", show)
    web_app.router.add_post("/notifications/{token}", switch)


@dataclass
class _State:
    key: str
    summary: str
    email: str
    language: str
    notify_on: bool


async def show(request: web.Request) -> web.Response:
    app: App = request.app[APP]
    state = await run_blocking(_apply, app, request.match_info["token"], None)
    return _page(app, state, saved=False)


async def switch(request: web.Request) -> web.Response:
    app: App = request.app[APP]
    form = await request.post()
    if form.get(ONE_CLICK[0]) == ONE_CLICK[1]:
        await run_blocking(_apply, app, request.match_info["token"], False)
        return web.Response(text="Notifications turned off.\n")
    wanted = form.get("notify")
    if wanted not in ("on", "off"):
        raise web.HTTPBadRequest(text="notify must be on or off\n")
    state = await run_blocking(_apply, app, request.match_info["token"], wanted == "on")
    return _page(app, state, saved=True)


def _apply(app: App, token: str, notify: bool | None) -> _State:
    """The link's ticket and contact, after switching to NOTIFY (None: only look)."""
    found = tokens.read(app.signer, token)
    if found is None:
        raise web.HTTPNotFound(text="This link is not valid.\n")
    key, email = found
    with app.db.session() as session:
        ticket, contact = service.find_ticket(session, key), find_contact(session, email)
        if ticket is None or contact is None:
            raise web.HTTPNotFound(text="This link is not valid.\n")
        if not service.may_see(ticket, contact):
            raise web.HTTPForbidden(text="This ticket is no longer visible to you.\n")
        if notify is not None:
            subscriptions.set_notify(session, ticket, contact, notify)
        on = subscriptions.is_on(session, ticket, contact)
        return _State(ticket.key, ticket.summary, contact.email, contact.language, on)


def _page(app: App, state: _State, saved: bool) -> web.Response:
    language = app.renderer.language(state.language)
    html = app.renderer.page("notifications_page", language, {
        "ticket": {"key": state.key, "summary": state.summary}, "contact": {"email": state.email},
        "notify_on": state.notify_on, "saved": saved,
    })
    return web.Response(text=html, content_type="text/html", headers=_PRIVATE)
