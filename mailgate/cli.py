"""The commands of SPEC §9. Thin: parse arguments, call one function, print the result.

Every failure the user can cause — a bad config file, an unknown key, address or organisation —
ends as one line on stderr and a non-zero exit, never a traceback.

Each command imports what it uses when it runs: `mailgate --version` and a `deliver` handed to
the daemon never load the database layer, the parsers or the templates (issue 16: Postfix's
pipe transport starts one `deliver` per message).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mailgate import LANGUAGES, __version__, terminal
from mailgate.errors import first_line, is_database_error, is_transient

if TYPE_CHECKING:
    from mailgate.app import App

log = logging.getLogger("mailgate")

EX_USAGE, EX_UNAVAILABLE, EX_TEMPFAIL, EX_CONFIG = 64, 69, 75, 78


class CliError(Exception):
    """A one-line error for the user, with the exit code it ends in."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class UsageError(Exception):
    """The command line does not parse (exit 64, or 75 for `deliver`)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is an exception instead of exit 2 (SPEC §9 says 64, and
    `deliver` must answer 75 so that a typo in an MTA's command line defers mail)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


# --- commands ------------------------------------------------------------------------------


def cmd_serve(app: App, args) -> int:
    from mailgate.serve import daemon

    return daemon.serve(app)


def cmd_deliver(app: App, args) -> int:
    from mailgate.ingest import pipe

    limit = app.config.smtp.max_message_size
    raw = pipe.read_message(sys.stdin.buffer, limit)
    delivery = pipe.refusal(app.config, limit + 1 if raw is None else len(raw), args.recipient)
    if delivery is None:
        delivery = pipe.hand_over(app.config, raw, args.sender, args.recipient)
    if delivery is None:  # no daemon runs: processed here
        try:
            app.prepare()
        except Exception as e:
            if not (isinstance(e, OSError) or is_transient(e)):
                raise
            _error(f"cannot store the message now: {first_line(e)}")
            return pipe.EX_TEMPFAIL
        delivery = pipe.deliver(app, raw, args.sender, args.recipient)
    if delivery.error:
        _error(delivery.error)
    if args.json:
        result = delivery.result
        _print_json({"outcome": result.outcome if result else None, "ticket": result.ticket if result else None})
    return delivery.exit_code


def cmd_org_add(app: App, args) -> int:
    from mailgate import contacts

    with _session(app) as s:
        org = contacts.add_organisation(s, args.name, args.region)
        print(f"organisation {org.name} added")
    return 0


def cmd_org_list(app: App, args) -> int:
    from mailgate import contacts

    with _session(app) as s:
        rows = contacts.organisation_rows(s)
    return _show_rows(args, rows, lambda r: f"{r['name']:<30} {r['region'] or '-':<10} {r['contacts']:>6} contacts")


def cmd_org_set(app: App, args) -> int:
    from mailgate import contacts

    if args.region is None:
        raise CliError("nothing to set: give --region REGION (or --region \"\" for none)", EX_USAGE)
    with _session(app) as s:
        org = contacts.set_region(s, args.name, args.region)
    print(terminal.line(f"organisation {org.name}: region {org.region or '(none)'}"))
    return 0


def cmd_contact_list(app: App, args) -> int:
    from mailgate import contacts

    with _session(app) as s:
        rows = contacts.contact_rows(s, args.org)
    return _show_rows(args, rows, lambda r: (f"{r['email']:<36} {r['language']} {'active ' if r['active'] else 'disabled'} "
                                             f"{r['organisation']:<20} {r['name']}"))


def cmd_contact_add(app: App, args) -> int:
    from mailgate import contacts

    with _session(app) as s:
        c = contacts.add_contact(s, args.email, args.name, args.org, args.language)
        print(f"contact {c.email} added to {args.org}")
    return 0


def cmd_contact_disable(app: App, args) -> int:
    from mailgate import contacts

    with _session(app) as s:
        c = contacts.disable_contact(s, args.email)
        print(f"contact {c.email} disabled")
    return 0


def cmd_contact_import(app: App, args) -> int:
    from mailgate import contacts

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    with _session(app) as s:
        report = contacts.import_contacts(s, path, create_orgs=args.create_orgs, progress=_import_progress)
    if report.encoding or report.delimiter:
        print(f"read {path.name} as {report.encoding}, delimiter {report.delimiter!r}", file=sys.stderr)
    print(f"created {len(report.created)}, updated {len(report.updated)}, "
          f"unchanged {len(report.unchanged)}, rejected {len(report.rejected)}")
    for state in ("created", "updated"):
        if lines := getattr(report, state):
            print(f"{state}: lines {_ranges(lines)}")
    for line, reason in report.rejected:
        print(terminal.line(f"line {line}: rejected: {reason}"))
    return 0


def _import_progress(rows: int) -> None:
    print(f"... {rows} rows", file=sys.stderr, flush=True)


def _ranges(numbers: list[int]) -> str:
    """[2, 3, 4, 7] → "2-4, 7"."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def cmd_ticket_list(app: App, args) -> int:
    from mailgate import desks, shapes
    from mailgate.models import Ticket

    where = ()
    if args.desk is not None:
        known = desks.of(app.config).names
        if args.desk not in known:
            raise CliError(f"unknown desk {args.desk!r}; the desks: {', '.join(known)}")
        where = (Ticket.desk == args.desk,)
    return _listing(app, args, Ticket, shapes.ticket_summary,
                    lambda r: f"{r['key']:<10} {r['status']:<14} {r['type']:<20} {r['creator']:<30} {r['summary']}",
                    where)


def cmd_ticket_show(app: App, args) -> int:
    from mailgate import shapes

    with _session(app) as s:
        detail = shapes.ticket_detail(_ticket(s, args.key), shapes.Names(s))
    if args.json:
        _print_json(detail)
    else:
        _print_ticket(detail)
    return 0


def cmd_ticket_comment(app: App, args) -> int:
    from mailgate.tickets import actions

    agent = _agent(app, args.agent)
    with _session(app) as s:
        ticket = _ticket(s, args.key)
        _rules(actions.comment, s, app, ticket, agent, args.body, args.internal)
    print(f"{ticket.key}: {'internal note' if args.internal else 'comment'} added")
    return 0


def cmd_ticket_set(app: App, args) -> int:
    from mailgate.tickets import actions

    if not (args.status or args.type or args.priority):
        raise CliError("nothing to set: give --status, --type or --priority", EX_USAGE)
    agent = _agent(app, args.agent) if args.agent is not None else None
    with _session(app) as s:
        ticket = _ticket(s, args.key)
        _rules(actions.set_fields, s, app, ticket, status=args.status, type=args.type, priority=args.priority,
               agent=agent)
    print(f"{ticket.key}: type {ticket.type}, status {ticket.status}, priority {ticket.priority or '-'}")
    return 0


def _agent(app: App, name: str) -> str:
    """NAME, when it names an agent of [[agents]] (any name when none are configured)."""
    name = name.strip()
    if not name:
        raise CliError("--agent: an agent name is needed", EX_USAGE)
    known = [a.name for a in app.config.agents]
    if known and name not in known:
        raise CliError(f"unknown agent {name!r}; [[agents]] has: {', '.join(known)}")
    return name


def cmd_lifecycle_run(app: App, args) -> int:
    from datetime import datetime

    from mailgate.models import aware, utcnow
    from mailgate.tickets import lifecycle

    try:
        now = aware(datetime.fromisoformat(args.now)) if args.now else utcnow()
    except ValueError:
        raise CliError(f"--now: {args.now!r} is not an ISO 8601 time", EX_USAGE) from None
    app.prepare()
    report = lifecycle.run(app, now)
    print(f"lifecycle at {now.isoformat()}: {report.closed} closed, {report.reminded} reminded")
    return 0


def _rules(action, *args, **kwargs):
    """Run a ticket action; a rule it breaks becomes a one-line CLI error."""
    from mailgate.tickets.service import TicketError

    try:
        return action(*args, **kwargs)
    except TicketError as e:
        raise CliError(str(e)) from None


def cmd_inbox_list(app: App, args) -> int:
    from mailgate import shapes
    from mailgate.models import Inbound

    return _listing(app, args, Inbound, shapes.inbound, lambda r: (
        f"{r['id']:>6} {r['received_at'][:19]} {r['outcome']:<24} {r['ticket'] or '-':<10} "
        f"{r['sender'] or '-'}{_note(r['error'])}"))


def cmd_inbox_reprocess(app: App, args) -> int:
    from mailgate.core.pipeline import Pipeline

    app.prepare()
    try:
        result = Pipeline(app).reprocess(args.id)
    except (LookupError, ValueError) as e:
        raise CliError(str(e)) from None
    except FileNotFoundError:
        raise CliError(f"the raw message of inbound {args.id} is missing from the store") from None
    print(f"inbound {args.id}: {result.outcome}" + (f" {result.ticket}" if result.ticket else ""))
    return 0


def cmd_notify(app: App, args) -> int:
    from mailgate import contacts
    from mailgate.notify import subscriptions

    with _session(app) as s:
        ticket, contact = _ticket(s, args.key), contacts.contact(s, args.contact)
        try:
            subscriptions.set_notify(s, ticket, contact, args.state == "on")
        except subscriptions.NotAllowed as e:
            raise CliError(str(e)) from None
    print(f"{ticket.key}: notifications {args.state} for {contact.email}")
    return 0


def cmd_outbox_list(app: App, args) -> int:
    from mailgate import shapes
    from mailgate.models import Outbound

    return _listing(app, args, Outbound, shapes.outbound, lambda r: (
        f"{r['id']:>6} {r['status']:<8} {r['attempts']:>2} {(r['next_attempt_at'] or '-')[:19]:<19} "
        f"{r['ticket'] or '-':<10} {r['event']:<22} {r['to']}{_note(r['last_error'])}"))


def cmd_outbox_retry(app: App, args) -> int:
    from mailgate.models import utcnow
    from mailgate.outbound import claims

    if (args.id is None) == (not args.all):
        raise CliError("give one outbound ID or --all", EX_USAGE)
    app.prepare()
    try:
        count = claims.make_due(app.db, utcnow(), None if args.all else args.id)
    except claims.NotRetryable as e:
        raise CliError(str(e)) from None
    print(f"{count} outbound message{'s' if count != 1 else ''} due now" if args.all else
          f"outbound {args.id}: due now")
    return 0


def cmd_outbox_flush(app: App, args) -> int:
    import asyncio

    from mailgate.outbound.sender import Sender

    app.prepare()
    report = asyncio.run(Sender(app).flush())
    print(f"sent {report.sent}, deferred {report.deferred}, failed {report.failed + report.expired}"
          + (f"; stopped: {report.outage}" if report.outage else ""))
    return 0


def cmd_oauth_login(app: App, args) -> int:
    import asyncio

    from mailgate.oauth import browser, device
    from mailgate.oauth.store import TokenStore

    account = _oauth_account(app, args.name)
    store = TokenStore(app.config.state_dir, account.name)
    flow = browser if account.authorize_url else device  # Google: a browser sign-in
    try:
        asyncio.run(flow.login(account, store, say=lambda line: print(line, flush=True)))
    except device.LoginFailed as e:
        raise CliError(f"oauth login {account.name}: {e}") from None
    print(f"{account.name}: signed in; the refresh token is kept in {store.path}")
    return 0


def cmd_oauth_status(app: App, args) -> int:
    from mailgate.oauth.accounts import status

    rows = status(app.config)
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        token = "token" if r["has_token"] else "NO TOKEN"
        print(f"{r['name']:<20} {token:<9} expires {r['expires_at'] or '-'}, refreshed {r['last_refresh'] or '-'}"
              f"{_note(r['last_error'])}")
    return 0


def _oauth_account(app: App, name: str):
    from mailgate.oauth.providers import accounts

    found = accounts(app.config)
    if name not in found:
        known = ", ".join(found) or "none are configured (auth = \"oauth2\")"
        raise CliError(f"no OAuth2 account {name!r}; the OAuth2 accounts: {known}")
    return found[name]


def cmd_explain(app: App, args) -> int:
    from mailgate.core.pipeline import Pipeline
    from mailgate.core.spool import Envelope
    from mailgate.mail.addresses import is_support_address

    path = Path(args.file)
    limit = app.config.smtp.max_message_size
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    if len(raw) > limit:
        raise CliError(f"{path}: over smtp.max_message_size ({limit} bytes); every inbound path refuses it (552 5.3.4)")
    app.prepare()
    if args.recipient and not is_support_address(args.recipient, app.config.support_addresses):
        raise CliError(f"--recipient: {args.recipient} is not a support address")
    # Without --recipient the To and Cc addresses name the desk, as for `deliver` without one.
    envelope = Envelope(sender=args.sender, recipients=[args.recipient] if args.recipient else [], source="explain")
    explained = Pipeline(app).explain(raw, envelope)
    if args.json:
        _print_json(explained)
        return 0
    print(terminal.line(f"outcome: {explained['outcome']}" + (f" {explained['ticket']}" if explained["ticket"] else "")))
    if explained["comment_of"]:
        print(terminal.line(f"a comment on {explained['comment_of']}"))
    for reason in explained["reasons"]:
        print(terminal.line(f"  because: {reason}"))
    for n in explained["notifications"]:
        print(terminal.line(f"  would mail {n['to']}: {n['event']}"))
    print("(nothing was written)")
    return 0


def cmd_check_config(app: App, args) -> int:
    cfg = app.config
    for key, path in (("storage.state_dir", cfg.state_dir), ("storage.attachments_dir", cfg.attachments_dir)):
        if problem := _unusable_directory(path):
            raise CliError(f"config: {key}: {problem}", EX_CONFIG)
    print(f"config ok: {cfg.source or 'embedded defaults'}")
    print(f"  database: {cfg.database_url.split('@')[-1]}")
    print(f"  state: {cfg.state_dir}")
    print(f"  {'lmtp' if cfg.smtp.lmtp else 'smtp'}: {cfg.smtp.host}:{cfg.smtp.port}; http: {cfg.http.host}:{cfg.http.port}")
    print(f"  support addresses: {', '.join(cfg.tickets.support_addresses)} (desk default, {cfg.tickets.key_prefix}-N)")
    for desk in cfg.desks:
        print(f"  desk {desk.name}: {', '.join(desk.addresses)} ({desk.key_prefix}-N)")
    for agent in cfg.agents:
        if agent.email:
            told = f"told of new tickets and comments of {', '.join(agent.desks) or 'every desk'}" if agent.notify else "not told"
            print(f"  agent {agent.name} by mail: {agent.email}; {told}")
    for box in cfg.imap:
        after = f"moved to {box.processed_folder}" if box.processed_folder else "expunged"
        oauth = f"; OAuth2 ({box.oauth_provider})" if box.auth == "oauth2" else ""
        print(f"  imap {box.label}: {box.host}:{box.port}/{box.folder} as {box.username}; processed mail {after}{oauth}")
    if cfg.outbound.relay_host and cfg.outbound.relay_auth == "oauth2":
        print(f"  relay {cfg.outbound.relay_host}:{cfg.outbound.relay_port} as {cfg.outbound.relay_username}; "
              f"OAuth2 ({cfg.outbound.relay_oauth_provider})")
    if cfg.operations.alert_address:
        print(f"  operator alerts: {cfg.operations.alert_address}")
    return 0


def _unusable_directory(path: Path) -> str | None:
    """Why mailgate could not keep files in PATH (created when missing), or None."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".check-config-"):
            pass
    except OSError as e:
        return f"{path}: cannot {'create' if not path.is_dir() else 'write'} it: {e.strerror or e}"
    return None


def cmd_db_upgrade(app: App, args) -> int:
    app.prepare()
    print("database schema is up to date")
    return 0


# --- helpers -------------------------------------------------------------------------------


class _session:
    """A prepared app's session; errors of the contacts module become CLI errors."""

    def __init__(self, app: App):
        self.app = app

    def __enter__(self):
        self.app.prepare()
        self._cm = self.app.db.session()
        return self._cm.__enter__()

    def __exit__(self, exc_type, exc, tb):
        from mailgate import contacts

        suppress = self._cm.__exit__(exc_type, exc, tb)
        if isinstance(exc, contacts.ContactsError):
            raise CliError(str(exc)) from None
        return suppress


def _listing(app: App, args, model, view, line, where: tuple = ()) -> int:
    """All rows of MODEL (that meet WHERE) in order, as JSON (--json) or one line each."""
    from sqlmodel import select

    from mailgate import shapes

    with _session(app) as s:
        names = shapes.Names(s)
        rows = [view(row, names) for row in s.exec(select(model).where(*where).order_by(model.id))]
    return _show_rows(args, rows, line)


def _show_rows(args, rows: list[dict], line) -> int:
    """ROWS as JSON (--json), else one terminal-safe line each."""
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(terminal.line(line(r)))
    return 0


def _note(error: str | None) -> str:
    return f"  ({error})" if error else ""


def _ticket(session, key: str):
    from mailgate.tickets.service import find_ticket

    ticket = find_ticket(session, key)
    if ticket is None:
        raise CliError(f"no ticket {key}")
    return ticket


def _print_json(value) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def _print_ticket(d: dict) -> None:
    """A ticket for a person: every value from mail passes terminal.line or terminal.block."""
    line = terminal.line
    print(line(f"{d['key']}  {d['summary']}"))
    print(line(f"  type {d['type']}, status {d['status']}, priority {d['priority'] or '-'}"))
    print(line(f"  creator {d['creator']} ({d['organisation']}), created {d['created_at']}"))
    if d["follow_up_of"]:
        print(line(f"  follow-up of {d['follow_up_of']}"))
    print()
    print(terminal.block(d["description"]))
    for a in d["attachments"]:
        print(line(f"  [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes{', inline' if a['inline'] else ''})"))
    for c in d["comments"]:
        print()
        print(line(f"--- {c['author']} at {c['created_at']}{' (internal)' if c['internal'] else ''}"))
        print(terminal.block(c["body"]))
        for a in c["attachments"]:
            print(line(f"  [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes)"))


def _error(message: str) -> None:
    print(f"mailgate: error: {terminal.line(message)}", file=sys.stderr)


# --- argument parsing ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mailgate", description="The e-mail gateway of a service desk.")
    p.add_argument("--config", metavar="PATH", help="config file (default: $MAILGATE_CONFIG, else embedded defaults)")
    p.add_argument("--version", action="version", version=f"mailgate {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("serve", help="run the daemon").set_defaults(func=cmd_serve)

    d = sub.add_parser("deliver", help="take one message on stdin (MTA pipe transport)")
    d.add_argument("--sender", help='envelope sender ("" for the null sender)')
    d.add_argument("--recipient", help="envelope recipient")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_deliver)

    org = sub.add_parser("org", help="organisations").add_subparsers(dest="sub", required=True, metavar="ACTION")
    a = org.add_parser("add", help="add an organisation")
    a.add_argument("name")
    a.add_argument("--region")
    a.set_defaults(func=cmd_org_add)
    a = org.add_parser("list", help="list organisations, their regions and how many contacts each has")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_org_list)
    a = org.add_parser("set", help="change an organisation (its region)")
    a.add_argument("name")
    a.add_argument("--region", help='the region whose agents see its confidential tickets; "" for none')
    a.set_defaults(func=cmd_org_set)

    contact = sub.add_parser("contact", help="contacts").add_subparsers(dest="sub", required=True, metavar="ACTION")
    a = contact.add_parser("add", help="add a contact")
    a.add_argument("email")
    a.add_argument("--name", required=True)
    a.add_argument("--org", required=True)
    a.add_argument("--language", default=None, choices=LANGUAGES,
                   help="the contact's mail; default: the language of the desk the mail is about (en for [tickets])")
    a.set_defaults(func=cmd_contact_add)
    a = contact.add_parser("list", help="list contacts")
    a.add_argument("--org", help="only this organisation's")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_contact_list)
    a = contact.add_parser("disable", help="disable a contact")
    a.add_argument("email")
    a.set_defaults(func=cmd_contact_disable)
    a = contact.add_parser("import", help="create or update contacts from CSV (email,name,organisation,language[,active])")
    a.add_argument("file")
    a.add_argument("--create-orgs", action="store_true", help="create organisations the file names (else such rows are rejected)")
    a.set_defaults(func=cmd_contact_import)

    ticket = sub.add_parser("ticket", help="tickets").add_subparsers(dest="sub", required=True, metavar="ACTION")
    a = ticket.add_parser("list", help="list tickets")
    a.add_argument("--desk", help="only the tickets of this desk (\"default\": the desk of [tickets])")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_ticket_list)
    a = ticket.add_parser("show", help="show one ticket")
    a.add_argument("key")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_ticket_show)

    a = ticket.add_parser("comment", help="comment as an agent")
    a.add_argument("key")
    a.add_argument("--agent", required=True)
    a.add_argument("--body", required=True)
    a.add_argument("--internal", action="store_true", help="an internal note: no customer sees it")
    a.set_defaults(func=cmd_ticket_comment)
    a = ticket.add_parser("set", help="change status, type or priority")
    a.add_argument("key")
    a.add_argument("--status")
    a.add_argument("--type")
    a.add_argument("--priority")
    a.add_argument("--agent")
    a.set_defaults(func=cmd_ticket_set)

    lc = sub.add_parser("lifecycle", help="the lifecycle timers").add_subparsers(dest="sub", required=True, metavar="ACTION")
    a = lc.add_parser("run", help="one pass: auto-close and reminders")
    a.add_argument("--now", help="the time to run at (ISO 8601); default: now")
    a.set_defaults(func=cmd_lifecycle_run)

    inbox = sub.add_parser("inbox", help="received messages").add_subparsers(dest="sub", required=True, metavar="ACTION")
    a = inbox.add_parser("list", help="list received messages and their outcomes")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_inbox_list)
    a = inbox.add_parser("reprocess", help="run a kept message through the rules again")
    a.add_argument("id", type=int)
    a.set_defaults(func=cmd_inbox_reprocess)

    a = sub.add_parser("notify", help="turn a contact's notifications for a ticket on or off")
    a.add_argument("key")
    a.add_argument("--contact", required=True, metavar="EMAIL")
    a.add_argument("state", choices=("on", "off"))
    a.set_defaults(func=cmd_notify)

    outbox = sub.add_parser("outbox", help="notification mail").add_subparsers(dest="sub", required=True, metavar="ACTION")
    a = outbox.add_parser("list", help="list outbound messages and their delivery state")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_outbox_list)
    a = outbox.add_parser("retry", help="make deferred mail due now (a failed one: queued again, with a fresh age)")
    a.add_argument("id", type=int, nargs="?")
    a.add_argument("--all", action="store_true", help="every queued message")
    a.set_defaults(func=cmd_outbox_retry)
    a = outbox.add_parser("flush", help="send what is due now, then exit")
    a.set_defaults(func=cmd_outbox_flush)

    oauth = sub.add_parser("oauth", help="OAuth2 sign-in of mailboxes and the relay").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    a = oauth.add_parser("login", help="sign in (device authorisation) and keep the refresh token")
    a.add_argument("name", help="a mailbox's name, or relay")
    a.set_defaults(func=cmd_oauth_login)
    a = oauth.add_parser("status", help="each OAuth2 account: token, expiry, last refresh, last error")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_oauth_status)
    a = sub.add_parser("explain", help="what processing would do with a message; writes nothing")
    a.add_argument("file", metavar="FILE.eml")
    a.add_argument("--sender", help='envelope sender ("" for the null sender)')
    a.add_argument("--recipient", help="envelope recipient (its desk); default: the desk the To and Cc name")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_explain)

    sub.add_parser("check-config", help="check the config file").set_defaults(func=cmd_check_config)
    db = sub.add_parser("db", help="database").add_subparsers(dest="sub", required=True, metavar="ACTION")
    db.add_parser("upgrade", help="bring the schema up to date").set_defaults(func=cmd_db_upgrade)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _command_of(argv) != "deliver":
        return _run(argv)
    # `deliver` answers an MTA: anything but a stored message or a clear refusal is 75, so
    # the MTA keeps the mail and tries again — a usage error, a bad config, a bug included.
    try:
        code = _run(argv, deliver=True)
    except SystemExit as e:  # --help, --version: the message was not taken
        code = e.code if isinstance(e.code, int) and e.code else EX_TEMPFAIL
    except BaseException as e:  # noqa: BLE001 - the MTA must hear 75, never a traceback
        _error(f"cannot take the message now: {first_line(e, with_type=True)}")
        return EX_TEMPFAIL
    return code if code in (0, 65, 67) else EX_TEMPFAIL


def _command_of(argv: list[str]) -> str | None:
    """The command word of ARGV (after the global options), without parsing it."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _run(argv: list[str], deliver: bool = False) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        _error(str(e))
        return EX_TEMPFAIL if deliver else EX_USAGE
    from mailgate import config as config_module  # not for --help or --version

    try:
        cfg = config_module.load(args.config)
    except config_module.ConfigError as e:
        _error(f"config: {e}")
        return EX_TEMPFAIL if deliver else EX_CONFIG
    from mailgate.app import App, configure_logging

    configure_logging(cfg)
    app = App(cfg)
    try:
        return args.func(app, args)
    except CliError as e:
        _error(str(e))
        return e.code
    except OSError as e:
        _error(f"{e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}")
        return EX_UNAVAILABLE
    except Exception as e:
        if not (is_database_error(e) and (is_transient(e) or _not_a_database(e))):
            raise
        _error(f"database unavailable: {first_line(e)}")
        return EX_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    finally:
        app.close()


def _not_a_database(error: Exception) -> bool:
    """The database URL names something that is no database (SQLite: "file is not a
    database"): the operator's to mend, and one line says so — no traceback."""
    return type(error).__name__ == "DatabaseError"


if __name__ == "__main__":
    sys.exit(main())
