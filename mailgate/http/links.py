"""The signed notification links (SPEC §5): /notifications/<token>, no login.

GET shows a small page with the contact's current on/off state and a button; POST switches
(form field notify=on|off). A POST whose body is `List-Unsubscribe=One-Click` is the RFC 8058
one-click unsubscribe a mail client sends for the List-Unsubscribe header: it turns
notifications off. A token that is forged, or names a ticket or contact that is gone, gets
404 and changes nothing; one for a contact who may no longer see the ticket gets 403. Those
answers are pages too, named after the service desk and in the contact's language when the
token names one, else in the browser's (Accept-Language), since a customer clicked them.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mailgate.app import App
from mailgate import LANGUAGES, desks
from mailgate.db import run_blocking
from mailgate.http import APP
from mailgate.models import Contact, Ticket
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


class _Refused(Exception):
    """A link that does nothing: STATUS, and WHY ("invalid" or "forbidden") for the page."""

    def __init__(self, status: int, why: str, language: str | None = None):
        super().__init__(why)
        self.status, self.why, self.language = status, why, language


async def show(request: web.Request) -> web.Response:
    app: App = request.app[APP]
    try:
        state = await run_blocking(_apply, app, request.match_info["token"], None)
    except _Refused as e:
        return _refused(request, e)
    return _page(app, state, saved=False)


async def switch(request: web.Request) -> web.Response:
    app: App = request.app[APP]
    form = await request.post()
    try:
        if form.get(ONE_CLICK[0]) == ONE_CLICK[1]:
            await run_blocking(_apply, app, request.match_info["token"], False)
            return web.Response(text="Notifications turned off.\n")
        wanted = form.get("notify")
        if wanted not in ("on", "off"):
            raise web.HTTPBadRequest(text="notify must be on or off\n")
        state = await run_blocking(_apply, app, request.match_info["token"], wanted == "on")
    except _Refused as e:
        return _refused(request, e)
    return _page(app, state, saved=True)


def _apply(app: App, token: str, notify: bool | None) -> _State:
    """The link's ticket and contact, after switching to NOTIFY (None: only look)."""
    found = tokens.read(app.signer, token)
    if found is None:
        raise _Refused(404, "invalid")
    ticket_id, contact_id = found
    with app.db.session() as session:
        ticket, contact = session.get(Ticket, ticket_id), session.get(Contact, contact_id)
        if ticket is None or contact is None:
            raise _Refused(404, "invalid", contact.language if contact else None)
        if not service.may_see(ticket, contact):
            raise _Refused(403, "forbidden", contact.language)
        if notify is not None:
            subscriptions.set_notify(session, ticket, contact, notify)
        on = subscriptions.is_on(session, ticket, contact)
        language = contact.language or desks.of(app.config).of_ticket(ticket).language  # as the mail was
        return _State(ticket.key, ticket.summary, contact.email, language, on)


def _page(app: App, state: _State, saved: bool) -> web.Response:
    language = app.renderer.language(state.language)
    html = app.renderer.page("notifications_page", language, {
        "ticket": {"key": state.key, "summary": state.summary}, "contact": {"email": state.email},
        "notify_on": state.notify_on, "saved": saved, **_desk(app),
    })
    return web.Response(text=html, content_type="text/html", headers=_PRIVATE)


def _refused(request: web.Request, refused: _Refused) -> web.Response:
    app: App = request.app[APP]
    language = app.renderer.language(refused.language or _browser_language(request))
    html = app.renderer.page("link_refused", language, {"why": refused.why, **_desk(app)})
    return web.Response(text=html, status=refused.status, content_type="text/html", headers=_PRIVATE)


def _desk(app: App) -> dict:
    return {"from_name": app.config.outbound.from_name, "support_address": app.config.from_address}


def _browser_language(request: web.Request) -> str | None:
    """The first language of Accept-Language (by q) that mailgate speaks; None for none."""
    wanted = []
    for part in request.headers.get("Accept-Language", "")[:500].split(","):
        tag, _, params = part.strip().partition(";")
        try:
            q = float(params.strip().removeprefix("q=")) if params.strip().startswith("q=") else 1.0
        except ValueError:
            q = 0.0
        wanted.append((-q, tag.strip().lower().split("-")[0]))
    for _, language in sorted(wanted):
        if language in LANGUAGES:
            return language
    return None
