"""The agents' JSON API (SPEC §8, issue #4): list and show tickets, comment, set fields,
switch a contact's notifications — beside the notification links on the daemon's HTTP port.

Every request carries `Authorization: Bearer TOKEN` of an agent from `[[agents]]` (401
without). A read-only agent may not change anything (403). Confidential tickets are visible
only to agents of the organisation's region (guide §2.5); to everybody else they do not exist
(404, so their keys are not revealed). The OpenAPI description is at /api/v1/openapi.json.

Every answer is JSON, errors too ({"error": "..."}): whatever a client sends — a token that is
not UTF-8, a body that is not JSON or nested too deep, a lone surrogate, a 5,000-digit number, the
wrong content type, an unknown filter value — it hears a 4xx saying what is wrong, never a
500. Lists are paged (`limit`, at most MAX_LIMIT, and `offset`), with the total in
`X-Total-Count` and the next page in a `Link: <…>; rel="next"` header.
"""

from __future__ import annotations

import hmac
import json
import logging
import re

import sqlalchemy as sa
from aiohttp import web
from sqlmodel import Session, select

from mailgate import desks, shapes
from mailgate.app import App
from mailgate.http import APP
from mailgate.config import AgentConfig
from mailgate.db import run_blocking
from mailgate.contacts import find_contact
from mailgate.errors import first_line, is_transient
from mailgate.models import STATUSES, TYPES, Contact, Organisation, Ticket
from mailgate.tickets import actions, service

log = logging.getLogger("mailgate.api")

PREFIX = "/api/v1"
DEFAULT_LIMIT, MAX_LIMIT = 100, 500
FILTERS = ("status", "type", "organisation", "creator", "q", "desk")
_KEY = re.compile(r"^[A-Za-z0-9]{1,20}-[0-9]{1,18}$")


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
    filters, limit, offset = _list_query(request)
    rows, total = await run_blocking(_list, _app(request), agent, filters, limit, offset)
    headers = {"X-Total-Count": str(total)}
    if offset + len(rows) < total:
        following = request.rel_url.update_query(limit=str(limit), offset=str(offset + limit))
        headers["Link"] = f'<{following}>; rel="next"'
    return web.json_response(rows, headers=headers)


def _list_query(request: web.Request) -> tuple[dict, int, int]:
    """The filters and the page of a list request, each checked (400 naming what is wrong)."""
    query = request.query
    unknown = sorted(set(query) - {*FILTERS, "limit", "offset"})
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; known: {', '.join((*FILTERS, 'limit', 'offset'))}")
    filters = {k: _text(k, query.get(k)) for k in FILTERS}
    for name, allowed in (("status", STATUSES), ("type", TYPES), ("desk", desks.of(_app(request).config).names)):
        if filters[name] is not None and filters[name] not in allowed:
            raise ApiError(400, f"{name}: {filters[name]!r} is not one of {', '.join(allowed)}")
    limit = _integer("limit", query.get("limit"), DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _integer("offset", query.get("offset"), 0, 0, 10**9)
    return filters, limit, offset


def _integer(name: str, value: str | None, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 10 or not low <= int(value) <= high:
        raise ApiError(400, f"{name}: a whole number from {low} to {high}")
    return int(value)


def _text(name: str, value: str | None) -> str | None:
    """A text parameter, refused when it cannot be stored or compared (a lone surrogate)."""
    if value is None:
        return None
    if len(value) > 1000 or not _encodable(value):
        raise ApiError(400, f"{name}: not valid text")
    return value


async def show_ticket(request: web.Request) -> web.Response:
    agent = _agent(request)
    return web.json_response(await run_blocking(_show, _app(request), agent, _key(request)))


async def add_comment(request: web.Request) -> web.Response:
    agent = _writer(request)
    body = await _json(request, {"body": str, "internal": bool}, required=("body",))
    detail = await run_blocking(_comment, _app(request), agent, _key(request), body)
    return web.json_response(detail, status=201)


async def set_fields(request: web.Request) -> web.Response:
    agent = _writer(request)
    body = await _json(request, {"status": str, "type": str, "priority": str, "confidential": bool})
    if not body:
        raise ApiError(400, "nothing to set: give status, type, priority or confidential")
    return web.json_response(await run_blocking(_set, _app(request), agent, _key(request), body))


async def set_subscription(request: web.Request) -> web.Response:
    agent = _writer(request)
    body = await _json(request, {"notify": bool}, required=("notify",))
    key, email = _key(request), _text("email", request.match_info["email"])
    result = await run_blocking(_subscribe, _app(request), agent, key, email, body["notify"])
    return web.json_response(result)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


# --- the work, in a thread ---------------------------------------------------------------------


def _list(app: App, agent: AgentConfig, f: dict, limit: int, offset: int) -> tuple[list[dict], int]:
    with app.db.read_session() as s:
        query = select(Ticket).join(Organisation, Organisation.id == Ticket.organisation_id)
        query = query.where(_visible(agent))
        if f["status"]:
            query = query.where(Ticket.status == f["status"])
        if f["type"]:
            query = query.where(Ticket.type == f["type"])
        if f["desk"]:
            query = query.where(Ticket.desk == f["desk"])
        if f["organisation"]:
            query = query.where(Organisation.name == f["organisation"])
        if f["creator"]:
            query = query.join(Contact, Contact.id == Ticket.creator_id).where(Contact.email == f["creator"].lower())
        if f["q"]:
            query = query.where(Ticket.summary.ilike(f"%{_escape_like(f['q'])}%", escape="\\"))
        total = s.exec(select(sa.func.count()).select_from(query.subquery())).one()
        names = shapes.Names(s)
        page = s.exec(query.order_by(Ticket.id).limit(limit).offset(offset))
        return [shapes.ticket_summary(t, names) for t in page], total


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
        _rules(actions.set_fields, s, app, ticket, agent=agent.name, **body)
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


def _key(request: web.Request) -> str:
    key = request.match_info["key"]
    if not _KEY.match(key):
        raise ApiError(404, "no such ticket")  # not a key at all: nothing to look up
    return key


def _agent(request: web.Request) -> AgentConfig:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # aiohttp hands over bytes that are not UTF-8 as surrogates; as bytes again they are
    # compared like any other wrong token.
    given = token.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() == "bearer" and given:
        for agent in _app(request).config.agents:
            if hmac.compare_digest(agent.token.encode(), given):
                return agent
    raise ApiError(401, "a valid bearer token is needed")


def _writer(request: web.Request) -> AgentConfig:
    agent = _agent(request)
    if agent.read_only:
        raise ApiError(403, f"agent {agent.name} may read, not change")
    return agent


async def _json(request: web.Request, fields: dict, required: tuple = ()) -> dict:
    """The request's JSON object, checked against FIELDS (name → type); ApiError otherwise."""
    if request.content_type not in ("application/json", "application/octet-stream"):
        # octet-stream: aiohttp's name for a body sent without any Content-Type
        raise ApiError(415, f"send the body as Content-Type: application/json, not {request.content_type}")
    data = await request.read()  # bounded by the application's client_max_size (413 beyond)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8") from None
    body = _parse_json(text)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    for name, value in body.items():
        if name not in fields:
            raise ApiError(400, f"unknown field {name[:100]!r}; known: {', '.join(fields)}")
        if not isinstance(value, fields[name]) or (fields[name] is not bool and isinstance(value, bool)):
            raise ApiError(400, f"{name}: expected {_TYPE_NAMES[fields[name]]}")
        if isinstance(value, str) and not _encodable(value):
            raise ApiError(400, f"{name}: not valid text (a lone surrogate)")
    missing = [name for name in required if name not in body]
    if missing:
        raise ApiError(400, f"missing field {missing[0]!r}")
    return body


_TYPE_NAMES = {str: "a string", bool: "true or false"}


def _parse_json(text: str):
    """TEXT as JSON. The C parser gives up on nesting deeper than the recursion limit with a
    RecursionError, and Python on numbers over 4,300 digits with a ValueError (as
    JSONDecodeError is): both are a client's mistake, not ours."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the body is not valid JSON: {first_line(e, 120)}") from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        return web.json_response({"error": e.reason}, status=e.status, headers=_allow(e))
    except Exception as e:
        if not request.path.startswith(PREFIX):
            raise
        if isinstance(e, sa.exc.SQLAlchemyError) and is_transient(e):
            return web.json_response({"error": "the database is unavailable; try again"}, status=503)
        log.exception("API %s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error (logged)"}, status=500)


def _allow(e: web.HTTPException) -> dict | None:
    allow = e.headers.get("Allow")
    return {"Allow": allow} if allow else None


# --- OpenAPI -------------------------------------------------------------------------------------


def _op(summary: str, ok: int, body: dict | None = None, params: tuple = ()) -> dict:
    op = {
        "summary": summary,
        "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params],
        "responses": {str(ok): {"description": "OK", "content": {"application/json": {}}},
                      **{str(c): {"$ref": "#/components/responses/Error"} for c in (400, 401, 403, 404, 409, 415, 422)}},
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
            **_op("List tickets (filters: status, type, organisation, creator, q = text in the summary, "
                  "desk = a desk's name, \"default\" for [tickets]); "
                  "paged: X-Total-Count has the total, Link rel=next the next page", 200),
            "parameters": [
                {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": list(STATUSES)}},
                {"name": "type", "in": "query", "required": False, "schema": {"type": "string", "enum": list(TYPES)}},
                *({"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                  for n in ("organisation", "creator", "q", "desk")),
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
                {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "default": 0}},
            ],
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
