"""One message through the rules of SPEC §4, in one database transaction: decide only.

`Pipeline.process` decides what one spooled message becomes: the inbound record, and the
ticket or comment with its attachments and the notifications it causes — all committed
together or not at all. What happens to the spooled file afterwards is the runner's
(`mailgate.core.runner`); the checks themselves are named functions in `mailgate.rules`.

The slow work on the sender's bytes — parsing (HTML to text included), stripping the quoted
history of a possible reply, storing the attachments — is done first, in `_prepare`, before
the transaction opens: the database's write lock (SQLite has one for the whole file) is held
for database work only.

`_decide` is the order of things, as a list:
    parse failure → machine mail (and our own bounces) → a proven agent's mail (SPEC §11:
    mailgate.tickets.by_mail) → sender → authentication → reference → (wait for older mail)
    → comment, or rate limit → new or follow-up ticket
De-duplication comes first, in `process`, because it is a race between instances that the
database decides. Each stage that decides says why in the decision's `reasons`.

`Pipeline.explain` is the dry run (`mailgate explain`): the same stages in a transaction that
is rolled back, with a blob store that only computes digests, so it can never drift from what
`process` does and writes nothing — no inbound record, no blob, no counter, no outbox row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Callable

import sqlalchemy as sa
from sqlmodel import Session, select

from mailgate import desks, failpoints, notify
from mailgate.contacts import find_contact
from mailgate.core.spool import Envelope
from mailgate.db import insert_if_absent
from mailgate.mail import quotes, refs, subjects
from mailgate.mail.addresses import is_support_address
from mailgate.mail.parse import Limits, ParsedMessage, UnparseableMessage, message_id_of, parse
from mailgate.models import Contact, Inbound, Seen, Ticket, utcnow
from mailgate.rules import agent as agent_rule, bounce, machine, notice, reference, sender
from mailgate.tickets import by_mail, service
from mailgate.tickets.events import Event

if TYPE_CHECKING:
    from mailgate.app import App

log = logging.getLogger("mailgate.inbound")

# "Was this spool id processed already?" (a crash between commit and settle).
_DONE = sa.select(Inbound.__table__.c.id).where(Inbound.__table__.c.spool_id == sa.bindparam("spool_id"))


class Deferred(Exception):
    """The message answers mail that is not in the database yet but may still be waiting in
    the spool: try it again once the older mail is done (rolled back, nothing written)."""


@dataclass
class Result:
    outcome: str
    ticket: str | None
    inbound_id: int
    error: str | None = None
    notifications: list[dict] = field(default_factory=list, repr=False)  # {"event", "to"} queued
    inbound: Inbound | None = field(default=None, repr=False, compare=False)  # for the log line
    desk: str | None = field(default=None, repr=False, compare=False)  # for /metrics


@dataclass
class _Prepared:
    """What the sender's bytes yield, worked out before the transaction (`_prepare`)."""

    raw: bytes
    digest: str  # sha256 of RAW, stored in the blob store
    parsed: ParsedMessage | None
    parse_error: str | None = None
    desk: desks.Desk | None = None  # the desk it came to (SPEC §11)
    agent: by_mail.AgentMail | None = None  # a proven agent's mail (SPEC §11)
    new_text: str | None = None  # the reply's text without quotes, when it may be a reply
    attachment_digests: list[str] = field(default_factory=list)

    @property
    def message_id(self) -> str | None:
        return self.parsed.message_id if self.parsed else message_id_of(self.raw)


@dataclass
class _Decision:
    """What the stages decided; written onto the inbound record at the end."""

    outcome: str
    ticket: Ticket | None = None
    comment_id: int | None = None
    events: list[Event] = field(default_factory=list)
    error: str | None = None
    # The sender's contact, held until the notifications are written: the session's identity
    # map holds objects weakly, and they look the contact up (a query each once it is gone).
    actor: Contact | None = None


class _Digests:
    """A blob store that stores nothing: the digests and paths `explain` needs, no files."""

    def __init__(self, real):
        self.path = real.path

    @staticmethod
    def put(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


class Pipeline:
    def __init__(self, app: "App", blobs=None):
        self.app = app
        self.blobs = blobs or app.blobs

    @property
    def config(self):
        return self.app.config  # read at use: a SIGHUP may have replaced it

    @property
    def limits(self) -> Limits:
        return Limits(**dataclasses.asdict(self.config.limits))

    # --- entry points ------------------------------------------------------------------

    def process(self, spool_id: str, envelope: Envelope, raw: bytes,
                wait_for_older: Callable[[], bool] | None = None) -> Result:
        """Process one spooled message; idempotent per spool id (a crash may repeat it).
        WAIT_FOR_OLDER, when given, is asked before a message whose references find no ticket
        becomes a new ticket; True raises Deferred."""
        started = time.monotonic()
        prepared = self._prepare(raw, envelope)
        try:
            with self.app.db.session() as session:
                result = self._process(session, spool_id, envelope, prepared, wait_for_older)
                failpoints.hit("before_commit", raw)
        except sa.exc.IntegrityError:
            # Its inbound record exists (the spool id is unique): processed and committed before
            # a crash kept the spool from forgetting it. Rare, so not asked of every message.
            if (done := self._processed(spool_id)) is None:
                raise
            return done
        failpoints.hit("after_commit", raw)
        self._log(result, started)
        return result

    def _processed(self, spool_id: str) -> Result | None:
        """The result SPOOL_ID got when it was processed before, or None."""
        with self.app.db.read_session() as session:
            done = session.connection().execute(_DONE, {"spool_id": spool_id}).scalar()
            return self._result(session, session.get(Inbound, done)) if done is not None else None

    def explain(self, raw: bytes, envelope: Envelope) -> dict:
        """What `process` would make of RAW (SPEC §9 `mailgate explain`), writing nothing."""
        dry = Pipeline(self.app, blobs=_Digests(self.blobs))
        prepared = dry._prepare(raw, envelope)
        reasons: list[str] = []
        with self.app.db.rolled_back() as session:
            result = dry._process(session, f"explain-{uuid.uuid4().hex}", envelope, prepared, reasons=reasons)
        return {"outcome": result.outcome, "ticket": result.ticket,
                "comment_of": result.ticket if result.outcome == "comment_added" else None,
                "notifications": result.notifications, "reasons": reasons}

    def _process(self, session, spool_id, envelope, prepared: "_Prepared", wait_for_older=None,
                 reasons: list[str] | None = None) -> Result:
        inbound = self._record(session, spool_id, envelope, prepared)
        original = _claim_dedupe_key(session, inbound)
        if original is not None:
            _say(reasons, f"a copy of inbound message {original.id} (same "
                          f"{'Message-ID' if inbound.message_id else 'bytes'}), received {original.received_at}")
            decision = _Decision("duplicate", ticket=_ticket(session, original.ticket_id))
        else:
            decision = self._decide(session, inbound, envelope, prepared, wait_for_older, reasons)
        return self._finish(session, inbound, decision, prepared.desk)

    def reprocess(self, inbound_id: int) -> Result:
        """Run a kept message through the rules again (SPEC §9 `inbox reprocess`)."""
        started = time.monotonic()
        with self.app.db.read_session() as session:
            inbound = _reprocessable(session.get(Inbound, inbound_id), inbound_id)
        envelope = Envelope(sender=inbound.envelope_sender, recipients=_split(inbound.envelope_recipients),
                            source=inbound.source)
        prepared = self._prepare(self.blobs.get(inbound.sha256), envelope)
        with self.app.db.session() as session:
            inbound = _reprocessable(session.get(Inbound, inbound_id), inbound_id)  # still, now locked
            decision = self._decide(session, inbound, envelope, prepared)
            inbound.attempts += 1
            result = self._finish(session, inbound, decision, prepared.desk)
        self._log(result, started)
        return result

    def quarantine(self, spool_id: str, envelope: Envelope, raw: bytes, error: str) -> Result:
        """Keep a message that failed too often, or blew its budget: raw stored, listed,
        reprocessable. It is not parsed again (parsing may be what fails, kills or overruns);
        its Message-ID comes from a plain scan of the header block."""
        failpoints.hit("quarantine", raw)
        prepared = _Prepared(raw, self.blobs.put(raw), parsed=None, desk=self.desks.of_message(envelope.recipients))
        with self.app.db.session() as session:
            done = session.exec(select(Inbound).where(Inbound.spool_id == spool_id)).first()
            if done is not None:
                return self._result(session, done)
            inbound = self._record(session, spool_id, envelope, prepared)
            inbound.attempts = envelope.attempts
            _claim_dedupe_key(session, inbound)
            result = self._finish(session, inbound, _Decision("quarantined", error=error[:2000]), prepared.desk)
        self._log(result, None)
        return result

    # --- before the transaction --------------------------------------------------------

    @property
    def desks(self) -> desks.Desks:
        return desks.of(self.config)

    def _prepare(self, raw: bytes, envelope: Envelope) -> _Prepared:
        """The slow, CPU-bound work on RAW, done before the transaction opens."""
        prepared = _Prepared(raw, self.blobs.put(raw), *_try_parse(raw, self.limits))
        parsed = prepared.parsed
        prepared.desk = self.desks.of_message(envelope.recipients, [*parsed.to, *parsed.cc] if parsed else [])
        if parsed is None:
            return prepared
        prepared.agent = by_mail.prepare(self.app, parsed, envelope.recipients, self.limits, self.blobs)
        if prepared.agent is None and reference.may_answer_a_ticket(parsed, self.desks.prefixes):
            prepared.new_text = quotes.new_text(parsed.text, parsed.subject)
        prepared.attachment_digests = [self.blobs.put(a.data) for a in parsed.attachments]
        return prepared

    # --- the stages --------------------------------------------------------------------

    def _decide(self, session, inbound, envelope, prepared: _Prepared, wait_for_older=None,
                reasons: list[str] | None = None) -> _Decision:
        parsed = prepared.parsed
        failpoints.hit("pipeline", parsed and parsed.subject.encode() or b"")
        cfg = self.config
        if parsed is None:
            _say(reasons, f"it cannot be parsed: {prepared.parse_error}")
            return _Decision("quarantined", error=prepared.parse_error)
        if why := machine.reason(parsed.headers, envelope.sender, parsed.from_address):
            bounced = bounce.record(session, self.app, parsed, envelope)  # our own mail bounced
            note = f"; bounce of outbound {', '.join(map(str, bounced))}" if bounced else ""
            _say(reasons, f"machine mail: {why}{note}")
            return _Decision("ignored_auto", error=f"machine mail: {why}{note}")
        if prepared.agent is not None and not self._a_contacts_own(session, prepared, reasons):
            return self._agent_mail(session, inbound, prepared, wait_for_older, reasons)
        claimed = agent_rule.claimed(cfg, parsed)
        if claimed is not None:
            _say(reasons, f"the From is agent {claimed.name}'s address, but neither the signed reply address nor "
                          f"a DMARC or aligned DKIM pass proves it: a customer's mail like any other")
        contact = sender.active_contact(session, parsed.from_address)
        if contact is None:
            _say(reasons, f"the sender {parsed.from_address or '(no From address)'} is not an active contact")
            if why := notice.why_not(cfg.policy, parsed, envelope.sender, agent=claimed):
                _say(reasons, why)
                return _Decision("rejected_unknown_sender", error=why)
            tell = Event("unknown_sender_notice", None, data={"address": parsed.from_address, "desk": prepared.desk.name})
            return _Decision("rejected_unknown_sender", events=[tell])
        if sender.unauthenticated(cfg.policy, parsed):
            _say(reasons, "policy.require_authenticated_sender: no DMARC or aligned DKIM pass from the trusted MTA")
            return _Decision("rejected_unauthenticated", error="no DMARC or aligned DKIM pass from the trusted MTA")
        _say(reasons, f"the sender {contact.email} is an active contact")
        ticket = reference.referenced_ticket(session, self.app.signer, self.desks.prefixes, parsed, contact)
        if ticket is None and (parsed.in_reply_to or parsed.references) and wait_for_older and wait_for_older():
            # Worked beside the mail it answers (a backlog, several workers), a reply would
            # otherwise open a ticket of its own when it commits first.
            raise Deferred()
        _say(reasons, f"it refers to {ticket.key} (subject or thread), which the sender may see" if ticket
             else "it refers to no ticket the sender may see")
        now = utcnow()
        if ticket is not None and ticket.status != "closed":
            return self._comment(session, inbound, prepared, contact, ticket, now, reasons)
        if sender.over_rate_limit(session, cfg.policy, contact, now):
            _say(reasons, f"policy.max_new_tickets_per_sender_per_hour ({cfg.policy.max_new_tickets_per_sender_per_hour}) "
                          "reached for this sender")
            return _Decision("rate_limited", error="too many new tickets from this sender in the last hour")
        _say(reasons, f"{ticket.key} is closed (final): a follow-up ticket" if ticket else "a new ticket")
        return self._new_ticket(session, inbound, prepared, contact, now, follow_up_of=ticket)

    @staticmethod
    def _a_contacts_own(session, prepared: _Prepared, reasons) -> bool:
        """Mail at an agent's signed reply address whose From is a contact's (active or not): a
        customer answering the agent's mail writes as themselves (mailgate.rules.agent)."""
        proof, address = prepared.agent.proof, prepared.parsed.from_address
        if not proof.unless_contact or find_contact(session, address) is None:
            return False
        _say(reasons, f"sent to agent {proof.agent.name}'s signed reply address, but from {address}, "
                      "a contact: their own mail, not the agent's")
        return True

    def _agent_mail(self, session, inbound, prepared: _Prepared, wait_for_older, reasons) -> _Decision:
        """A proven agent's mail: a reply to the ticket it refers to, else a forward on behalf of
        a customer (mailgate.tickets.by_mail)."""
        mail, parsed = prepared.agent, prepared.parsed
        _say(reasons, f"agent {mail.proof.agent.name}'s mail, proven: {mail.proof.how}")
        ticket = reference.first_referenced(session, self.app.signer, self.desks.prefixes, parsed)
        if ticket is None and (parsed.in_reply_to or parsed.references) and wait_for_older and wait_for_older():
            raise Deferred()
        if ticket is None:
            decided = by_mail.forward(session, mail, parsed, utcnow(), inbound.id,
                                      (parsed.attachments, prepared.attachment_digests), prepared.desk, self.desks.prefixes)
        elif (original := self._claim_for_ticket(session, inbound, ticket)) is not None:
            _say(reasons, f"a copy of inbound message {original.id}, already applied to {ticket.key} (sent to two desks)")
            return _Decision("duplicate", ticket=ticket)
        else:
            decided = by_mail.reply(session, mail, parsed, ticket, utcnow(), inbound.id,
                                    (parsed.attachments, prepared.attachment_digests), prepared.desk)
        _say(reasons, decided.reason)
        return _Decision(decided.outcome, decided.ticket, decided.comment_id, decided.events, decided.error)

    def _comment(self, session, inbound, prepared: _Prepared, contact, ticket, now, reasons=None) -> _Decision:
        parsed = prepared.parsed
        if (original := self._claim_for_ticket(session, inbound, ticket)) is not None:
            _say(reasons, f"a copy of inbound message {original.id}, already a comment on {ticket.key} (sent to two desks)")
            return _Decision("duplicate", ticket=ticket)
        body = prepared.new_text if prepared.new_text is not None else quotes.new_text(parsed.text, parsed.subject)
        comment, events = service.add_comment(
            session, ticket, body=body, now=now, author=contact, inbound_id=inbound.id
        )
        comment.full_body = parsed.text  # what the cut took stays reachable (SPEC §4.7)
        service.store_attachments(session, ticket, parsed.attachments, prepared.attachment_digests, comment)
        feedback = service.customer_feedback(ticket, body, self.config.tickets.close_phrases, now, contact.id)
        _say(reasons, f"a comment on {ticket.key}" + "".join(
            f"; the status goes from {e.old} to {e.new}" for e in feedback if e.kind == "status_changed"))
        events += feedback
        service.add_to_thread(session, ticket, parsed.message_id)
        return _Decision("comment_added", ticket=ticket, comment_id=comment.id, events=events, actor=contact)

    def _new_ticket(self, session, inbound, prepared: _Prepared, contact, now, follow_up_of=None) -> _Decision:
        parsed = prepared.parsed
        desk = prepared.desk
        ticket, events = service.create_ticket(
            session, key_prefix=desk.key_prefix, desk=desk.name, creator=contact,
            summary=subjects.summary(parsed.subject, self.desks.prefixes),
            description=parsed.text, now=now, follow_up_of=follow_up_of,
        )
        service.store_attachments(session, ticket, parsed.attachments, prepared.attachment_digests)
        for participant in self._participants(session, parsed, contact):
            service.add_participant(session, ticket, participant)
        service.add_to_thread(session, ticket, parsed.message_id)
        return _Decision("ticket_created", ticket=ticket, events=events, actor=contact)

    def _claim_for_ticket(self, session: Session, inbound: Inbound, ticket: Ticket) -> Inbound | None:
        """With several desks one message may come once per desk (SPEC §11): only the first
        copy may act on an existing ticket. The original's record when this is a later copy."""
        if not self.desks.several:
            return None
        message = refs.dedupe_key(inbound.message_id, inbound.sha256)  # the same for every desk's copy
        return _claim(session, inbound, hashlib.sha256(f"ticket:{ticket.id}\n{message}".encode()).hexdigest())

    def _participants(self, session: Session, parsed: ParsedMessage, creator: Contact) -> list[Contact]:
        """Cc'd (and To'd) active contacts of the sender's organisation (SPEC §4.8)."""
        support = self.config.support_addresses
        addresses = {a for a in [*parsed.to, *parsed.cc] if a != creator.email and not is_support_address(a, support)}
        if not addresses:
            return []
        return list(session.exec(
            select(Contact).where(
                Contact.email.in_(sorted(addresses)), Contact.active.is_(True),
                Contact.organisation_id == creator.organisation_id,
            )
        ))

    # --- records and results -----------------------------------------------------------

    def _record(self, session, spool_id, envelope, prepared: _Prepared) -> Inbound:
        message_id, parsed, digest = prepared.message_id, prepared.parsed, prepared.digest
        inbound = Inbound(
            spool_id=spool_id, message_id=message_id,
            dedupe_key=prepared.desk.dedupe_key(refs.dedupe_key(message_id, digest)),
            source=envelope.source, envelope_sender=envelope.sender,
            envelope_recipients=",".join(envelope.recipients),
            from_address=parsed.from_address if parsed else None,
            received_at=datetime.fromisoformat(envelope.received_at), sha256=digest,
            raw_path=str(self.blobs.path(digest)), size=len(prepared.raw), outcome="quarantined",
            attempts=envelope.attempts + 1,
        )
        session.add(inbound)
        session.flush()
        return inbound

    def _finish(self, session: Session, inbound: Inbound, decision: _Decision, desk: desks.Desk | None = None) -> Result:
        inbound.outcome = decision.outcome
        inbound.ticket_id = decision.ticket.id if decision.ticket else None
        inbound.comment_id = decision.comment_id
        inbound.error = decision.error
        inbound.processed_at = utcnow()
        session.add(inbound)
        queued = notify.queue(session, self.app, decision.events)
        key = decision.ticket.key if decision.ticket else None
        desk = (self.desks.of_ticket(decision.ticket) if decision.ticket else desk or self.desks.default).name
        return Result(decision.outcome, key, inbound.id, decision.error,
                      [{"event": row.event, "to": row.recipient} for row in queued], inbound, desk)

    def _result(self, session: Session, inbound: Inbound) -> Result:
        ticket = _ticket(session, inbound.ticket_id)
        return Result(inbound.outcome, ticket.key if ticket else None, inbound.id, inbound.error)

    def _log(self, result: Result, started: float | None) -> None:
        inbound = result.inbound
        seconds = time.monotonic() - started if started else None
        self.app.metrics.message(result.outcome, seconds, result.desk)
        ms = f"{seconds * 1000:.0f}" if seconds is not None else "-"
        log.info(
            "message_id=%s sender=%s outcome=%s ticket=%s ms=%s",
            inbound.message_id or "-", inbound.from_address or inbound.envelope_sender or "-",
            result.outcome, result.ticket or "-", ms,
        )


# --- helpers -------------------------------------------------------------------------------


def _say(reasons: list[str] | None, reason: str) -> None:
    """Note why a stage decided, when someone asks (explain)."""
    if reasons is not None:
        reasons.append(reason)


def _try_parse(raw: bytes, limits: Limits) -> tuple[ParsedMessage | None, str | None]:
    failpoints.hit("parse", raw)  # "a library bug next year" (the budget tests)
    try:
        return parse(raw, limits), None
    except UnparseableMessage as e:
        if isinstance(e.__cause__, MemoryError):
            raise e.__cause__ from None  # the budget's, not the message's: the runner decides
        return None, str(e) if str(e).startswith("limit:") else f"unparseable: {e}"


def _reprocessable(inbound: Inbound | None, inbound_id: int) -> Inbound:
    if inbound is None:
        raise LookupError(f"no inbound message {inbound_id}")
    if inbound.outcome in ("ticket_created", "comment_added", "ticket_changed", "duplicate"):
        raise ValueError(f"inbound message {inbound_id} is {inbound.outcome}; nothing to reprocess")
    return inbound


def _claim_dedupe_key(session: Session, inbound: Inbound) -> Inbound | None:
    """Claim the message's de-duplication key for INBOUND; the original's record if it was taken.

    The key is a primary key, so two instances racing for one message cannot both win: the
    loser's insert does nothing (on PostgreSQL once the winner commits) and it becomes a
    duplicate.
    """
    return _claim(session, inbound, inbound.dedupe_key)


def _claim(session: Session, inbound: Inbound, key: str) -> Inbound | None:
    """Claim KEY for INBOUND (a Seen row); the record that claimed it first, if it was taken."""
    if insert_if_absent(session, Seen, dedupe_key=key, inbound_id=inbound.id):
        return None
    seen = session.get(Seen, key)
    return session.get(Inbound, seen.inbound_id)


def _ticket(session: Session, ticket_id: int | None) -> Ticket | None:
    return session.get(Ticket, ticket_id) if ticket_id else None


def _split(text: str) -> list[str]:
    return [a for a in text.split(",") if a]
