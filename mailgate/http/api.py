"""The agents' JSON API (SPEC §8, issue #4): list and show tickets, comment, set fields,
switch a contact's notifications — beside the notification links on the daemon's HTTP port.

Every request carries `Authorization: Bearer TOKEN` of an agent from `[[agents]]` (401
without). A read-only agent may not change anything (403). Confidential tickets are visible
only to agents of the organisation's region (guide §2.5); to everybody else they do not exist
(404, so their keys are not revealed). Errors are JSON: {"error": "..."}. The OpenAPI
description is at /api/v1/openapi.json.
"""

from __future__ import annotations

import hmac
import json

import sqlalchemy as sa
from aiohttp import web
from sqlmodel import Session, select

from mailgate import shapes
from mailgate.app import App
from mailgate.http import APP
from mailgate.config import AgentConfig
from mailgate.db import run_blocking
from mailgate.contacts import find_contact
from mailgate.models import Contact, Organisation, Ticket
from mailgate.tickets import actions, service

PREFIX = "/api/v1"


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def routes(web_app: web.Application) -> None:
    web_app.middlewares.append(_errors)
    r = web_app.router
    r.add_get(f"{PREFIX}/openapi.json", openapi)
    r.add_get(f"{PREFIX}/tickets", list_tickets)
    r.add_get(f"{PREFIX}/tickets/{{key}}", show_ticket)
    r.add_patch(f"{PREFIX}/tickets/{{key}}", set_fields)
    r.add_post(f"{PREFIX}/tickets/{{key}}/comments", add_comment)
    r.add_put(f"{PREFIX}/tickets/{{key}}/subscriptions/{{email}}", set_subscription)


# --- handlers ------------------------------------------------------------------------------


async def list_tickets(request: web.Request) -> web.Response:
    agent = _agent(request)
    filters = {k: request.query.get(k) for k in ("status", "type", "organisation", "q", "creator")}
    rows = await run_blocking(_list, _app(request), agent, filters)
    return web.json_response(rows)


async def show_ticket(request: web.Request) -> web.Response:
    agent = _agent(request)
    return web.json_response(await run_blocking(_show, _app(request), agent, request.match_info["key"]))


async def add_comment(request: web.Request) -> web.Response:
    agent = _writer(request)
    body = await _json(request, {"body": str, "internal": bool}, required=("body",))
    detail = await run_blocking(_comment, _app(request), agent, request.match_info["key"], body)
    return web.json_response(detail, status=201)


async def set_fields(request: web.Request) -> web.Response:
    agent = _writer(request)
    body = await _json(request, {"status": str, "type": str, "priority": str, "confidential": bool})
    if not body:
        raise ApiError(400, "nothing to set: give status, type, priority or confidential")
    return web.json_response(await run_blocking(_set, _app(request), agent, request.match_info["key"], body))


async def set_subscription(request: web.Request) -> web.Response:
    agent = _writer(request)
    body = await _json(request, {"notify": bool}, required=("notify",))
    key, email = request.match_info["key"], request.match_info["email"]
    result = await run_blocking(_subscribe, _app(request), agent, key, email, body["notify"])
    return web.json_response(result)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


# --- the work, in a thread ---------------------------------------------------------------------


def _list(app: App, agent: AgentConfig, f: dict) -> list[dict]:
    with app.db.read_session() as s:
        query = select(Ticket).join(Organisation, Organisation.id == Ticket.organisation_id)
        query = query.where(_visible(agent)).order_by(Ticket.id)
        if f["status"]:
            query = query.where(Ticket.status == f["status"])
        if f["type"]:
            query = query.where(Ticket.type == f["type"])
        if f["organisation"]:
            query = query.where(Organisation.name == f["organisation"])
        if f["creator"]:
            query = query.join(Contact, Contact.id == Ticket.creator_id).where(Contact.email == f["creator"].lower())
        if f["q"]:
            query = query.where(Ticket.summary.ilike(f"%{_escape_like(f['q'])}%", escape="\\"))
        names = shapes.Names(s)
        return [shapes.ticket_summary(t, names) for t in s.exec(query)]


def _show(app: App, agent: AgentConfig, key: str) -> dict:
    with app.db.read_session() as s:
        return shapes.ticket_detail(_ticket(s, agent, key), shapes.Names(s))


def _comment(app: App, agent: AgentConfig, key: str, body: dict) -> dict:
    with app.db.session() as s:
        ticket = _ticket(s, agent, key)
        _rules(actions.comment, s, app, ticket, agent.name, body["body"], body.get("internal", False))
        return shapes.ticket_detail(ticket, shapes.Names(s))


def _set(app: App, agent: AgentConfig, key: str, body: dict) -> dict:
    with app.db.session() as s:
        ticket = _ticket(s, agent, key)
        _rules(actions.set_fields, s, app, ticket, **body)
        return shapes.ticket_detail(ticket, shapes.Names(s))


def _subscribe(app: App, agent: AgentConfig, key: str, email: str, on: bool) -> dict:
    from mailgate.notify import subscriptions

    with app.db.session() as s:
        ticket = _ticket(s, agent, key)
        contact = find_contact(s, email)
        if contact is None:
            raise ApiError(404, f"no contact {email}")
        try:
            subscriptions.set_notify(s, ticket, contact, on)
        except subscriptions.NotAllowed as e:
            raise ApiError(422, str(e)) from None
        return {"ticket": ticket.key, "contact": contact.email, "notify": on}


def _ticket(session: Session, agent: AgentConfig, key: str) -> Ticket:
    ticket = service.find_ticket(session, key, _visible(agent))
    if ticket is None:
        raise ApiError(404, f"no ticket {key}")
    return ticket


def _visible(agent: AgentConfig):
    """Non-confidential tickets for all; confidential ones for agents of the org's region."""
    if not agent.region:
        return Ticket.confidential.is_(False)
    of_region = select(Organisation.id).where(Organisation.region == agent.region)
    return sa.or_(Ticket.confidential.is_(False), Ticket.organisation_id.in_(of_region))


def _rules(action, *args, **kwargs):
    try:
        return action(*args, **kwargs)
    except service.TicketError as e:
        raise ApiError(409 if isinstance(e, service.TicketClosed) else 422, str(e)) from None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- authentication and input ------------------------------------------------------------------


def _app(request: web.Request) -> App:
    return request.app[APP]


def _agent(request: web.Request) -> AgentConfig:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        for agent in _app(request).config.agents:
            if hmac.compare_digest(agent.token.encode(), token.strip().encode()):
                return agent
    raise ApiError(401, "a valid bearer token is needed")


def _writer(request: web.Request) -> AgentConfig:
    agent = _agent(request)
    if agent.read_only:
        raise ApiError(403, f"agent {agent.name} may read, not change")
    return agent


async def _json(request: web.Request, fields: dict, required: tuple = ()) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    for name, value in body.items():
        if name not in fields:
            raise ApiError(400, f"unknown field {name!r}")
        if not isinstance(value, fields[name]):
            raise ApiError(400, f"{name}: expected {fields[name].__name__}")
    missing = [name for name in required if name not in body]
    if missing:
        raise ApiError(400, f"missing field {missing[0]!r}")
    return body


@web.middleware
async def _errors(request: web.Request, handler):
    """Errors of the API as JSON with the right status; other routes keep their own."""
    try:
        return await handler(request)
    except ApiError as e:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return web.json_response({"error": str(e)}, status=e.status, headers=headers)
    except web.HTTPException as e:
        if not request.path.startswith(PREFIX):
            raise
        return web.json_response({"error": e.reason}, status=e.status)


# --- OpenAPI -------------------------------------------------------------------------------------


def _op(summary: str, ok: int, body: dict | None = None, params: tuple = ()) -> dict:
    op = {
        "summary": summary,
        "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params],
        "responses": {str(ok): {"description": "OK", "content": {"application/json": {}}},
                      **{str(c): {"$ref": "#/components/responses/Error"} for c in (400, 401, 403, 404, 409, 422)}},
    }
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _object(**props) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": props}


OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "mailgate agent API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {"Error": {"description": "an error", "content": {"application/json": {"schema": _object(error={"type": "string"})}}}},
    },
    "security": [{"bearer": []}],
    "paths": {
        f"{PREFIX}/tickets": {"get": {
            **_op("List tickets (filters: status, type, organisation, creator, q = text in the summary)", 200),
            "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                           for n in ("status", "type", "organisation", "creator", "q")],
        }},
        f"{PREFIX}/tickets/{{key}}": {
            "get": _op("Show one ticket", 200, params=("key",)),
            "patch": _op("Set status, type, priority or confidential", 200, _object(
                status={"type": "string"}, type={"type": "string"}, priority={"type": "string"},
                confidential={"type": "boolean"}), ("key",)),
        },
        f"{PREFIX}/tickets/{{key}}/comments": {"post": _op(
            "Comment (internal: an internal note no customer sees)", 201,
            {**_object(body={"type": "string"}, internal={"type": "boolean"}), "required": ["body"]}, ("key",))},
        f"{PREFIX}/tickets/{{key}}/subscriptions/{{email}}": {"put": _op(
            "Turn a contact's notifications for the ticket on or off", 200,
            {**_object(notify={"type": "boolean"}), "required": ["notify"]}, ("key", "email"))},
    },
}
