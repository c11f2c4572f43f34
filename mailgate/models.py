"""The tables of SPEC §2, as SQLModel classes; names follow the domain (ticket, comment, ...).

Times are stored as timezone-aware UTC datetimes. Alembic migrations in
`mailgate/migrations` create these tables; `tests/test_migrations.py` checks they match.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

TYPES = {
    "incident": "Incident",
    "request": "Request",
    "software_defect": "Software Defect",
    "non_software_defect": "Non-Software Defect",
    "consulting_request": "Consulting Request",
    "support_request": "Support Request",
    "customisation": "Customisation",
    "suggestion": "Suggestion",
    "delivery": "Delivery",
}
TYPES_DE = {  # display names in German notifications
    "incident": "Störung",
    "request": "Anfrage",
    "software_defect": "Softwarefehler",
    "non_software_defect": "Nicht-Software-Fehler",
    "consulting_request": "Beratungsanfrage",
    "support_request": "Supportanfrage",
    "customisation": "Anpassung",
    "suggestion": "Vorschlag",
    "delivery": "Lieferung",
}

STATUSES = {
    "opened": "Opened",
    "in_review": "In Review by Service Desk",
    "clarification": "Clarification required / On hold",
    "in_progress": "In Progress",
    "estimation_in_progress": "Estimation in progress",
    "estimation_available": "Estimation available",
    "ordered": "Ordered",
    "delivery_pending": "Delivery Pending",
    "resolved": "Resolved",
    "closed": "Closed",
    "planned": "Planned",
    "delivered": "Delivered",
    "stage_installed": "Stage installation completed",
    "installed": "Installation completed",
}
STATUSES_DE = {
    "opened": "Eröffnet",
    "in_review": "In Prüfung durch den Service Desk",
    "clarification": "Klärung erforderlich / Zurückgestellt",
    "in_progress": "In Bearbeitung",
    "estimation_in_progress": "Aufwandsschätzung in Arbeit",
    "estimation_available": "Aufwandsschätzung verfügbar",
    "ordered": "Beauftragt",
    "delivery_pending": "Auslieferung ausstehend",
    "resolved": "Gelöst",
    "closed": "Geschlossen",
    "planned": "Geplant",
    "delivered": "Ausgeliefert",
    "stage_installed": "Installation auf Stage abgeschlossen",
    "installed": "Installation abgeschlossen",
}

PRIORITIES = ("P1", "P2", "P3", "P4")
PRIORITISED_TYPES = frozenset({"incident", "software_defect", "non_software_defect"})

OUTCOMES = (
    "ticket_created", "comment_added", "duplicate", "ignored_auto",
    "rejected_unknown_sender", "rejected_unauthenticated", "rate_limited", "quarantined",
    # a proven agent's mail (SPEC §11): fields changed without a comment; a reply whose
    # commands or action were refused, or a forward that opened nothing (nothing applied,
    # the agent told why)
    "ticket_changed", "rejected_command", "rejected_forward",
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything mailgate stores is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _time(**kw):
    return Field(sa_type=sa.DateTime(timezone=True), **kw)


class Organisation(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    region: Optional[str] = Field(default=None, max_length=100)


class Contact(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)  # always stored in lower case
    name: str = Field(max_length=200)
    organisation_id: int = Field(foreign_key="organisation.id", index=True)
    # en or de; "": none given, so the language of the desk the mail is about (SPEC §11)
    language: str = Field(default="", max_length=2)
    active: bool = True


class Counter(SQLModel, table=True):
    """Monotonic counters: one row per name, only ever incremented (ticket numbers: one per
    key prefix, `ticket:SD`)."""

    name: str = Field(primary_key=True, max_length=50)
    value: int = 0


class Ticket(SQLModel, table=True):
    # `ticket list --desk`, the API's desk filter and /metrics' tickets by desk and status.
    __table_args__ = (sa.Index("ix_ticket_desk_status", "desk", "status"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(max_length=40, unique=True)
    desk: str = Field(default="default", max_length=100)  # the desk it was opened at (SPEC §11)
    type: str = Field(default="request", max_length=40)
    status: str = Field(default="opened", max_length=40, index=True)
    status_before_clarification: Optional[str] = Field(default=None, max_length=40)
    priority: Optional[str] = Field(default=None, max_length=2)
    summary: str = Field(max_length=255)
    description: str = Field(default="", sa_type=sa.Text)
    creator_id: int = Field(foreign_key="contact.id", index=True)
    organisation_id: int = Field(foreign_key="organisation.id", index=True)
    shared: bool = True
    confidential: bool = False
    your_reference: Optional[str] = Field(default=None, max_length=255)
    follow_up_of_id: Optional[int] = Field(default=None, foreign_key="ticket.id")
    created_at: datetime = _time(default_factory=utcnow)
    updated_at: datetime = _time(default_factory=utcnow)
    # The lifecycle (SPEC §6) runs from the last human customer feedback or status change.
    last_customer_feedback_at: datetime = _time(default_factory=utcnow)
    status_changed_at: datetime = _time(default_factory=utcnow)
    reminders_sent: int = 0


class Comment(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    author_contact_id: Optional[int] = Field(default=None, foreign_key="contact.id")
    author_agent: Optional[str] = Field(default=None, max_length=200)
    body: str = Field(default="", sa_type=sa.Text)
    full_body: Optional[str] = Field(default=None, sa_type=sa.Text)  # the mail's whole text, quotes included
    internal: bool = False
    created_at: datetime = _time(default_factory=utcnow)
    inbound_id: Optional[int] = Field(default=None, foreign_key="inbound.id")


class Attachment(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    comment_id: Optional[int] = Field(default=None, foreign_key="comment.id", index=True)
    filename: str = Field(max_length=255)  # as the sender named it, for display only
    content_type: str = Field(max_length=255)
    size: int
    sha256: str = Field(max_length=64)  # names the content file in the blob store
    inline: bool = False
    content_id: Optional[str] = Field(default=None, max_length=255)


class Subscription(SQLModel, table=True):
    """A contact's explicit choice for one ticket; participants (Cc) start with notify on."""

    __table_args__ = (sa.UniqueConstraint("ticket_id", "contact_id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    contact_id: int = Field(foreign_key="contact.id", index=True)
    notify: bool = True
    participant: bool = False


class Inbound(SQLModel, table=True):
    """One row per received message (SPEC §2 'Inbound record')."""

    id: Optional[int] = Field(default=None, primary_key=True)
    spool_id: str = Field(max_length=64, unique=True)  # makes reprocessing after a crash exact
    message_id: Optional[str] = Field(default=None, max_length=998, sa_type=sa.Text)
    dedupe_key: str = Field(max_length=64, index=True)
    source: str = Field(default="smtp", max_length=10)
    envelope_sender: Optional[str] = Field(default=None, max_length=320)
    envelope_recipients: str = Field(default="", sa_type=sa.Text)  # comma-separated
    from_address: Optional[str] = Field(default=None, max_length=320, index=True)
    received_at: datetime = _time(default_factory=utcnow)
    processed_at: Optional[datetime] = _time(default=None)
    sha256: str = Field(max_length=64)
    raw_path: str = Field(max_length=500)
    size: int = 0
    outcome: str = Field(max_length=40, index=True)
    ticket_id: Optional[int] = Field(default=None, foreign_key="ticket.id", index=True)
    comment_id: Optional[int] = None  # no foreign key: comment.inbound_id points back here
    error: Optional[str] = Field(default=None, sa_type=sa.Text)
    attempts: int = 1


class Seen(SQLModel, table=True):
    """The first inbound record of each message: its primary key makes de-duplication race-free."""

    dedupe_key: str = Field(primary_key=True, max_length=64)
    inbound_id: int = Field(foreign_key="inbound.id")


class ThreadMessage(SQLModel, table=True):
    """Message-IDs of a ticket's thread (received and sent), for In-Reply-To/References.

    Keyed by the sha256 of the normalised Message-ID (`mail.refs.id_hash`): fixed length,
    whatever a sender puts in the header.
    """

    id_hash: str = Field(primary_key=True, max_length=64)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)


class Outbound(SQLModel, table=True):
    """The transactional outbox (SPEC §7): written with the change that causes it."""

    __table_args__ = (
        # The sender's claim: the most overdue queued row, without sorting all of them.
        sa.Index("ix_outbound_claim", "status", "next_attempt_at", "id"),
        # The per-recipient rate limit counts one recipient's rows of the last hour.
        sa.Index("ix_outbound_recipient_created_at", "recipient", "created_at"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    ticket_id: Optional[int] = Field(default=None, foreign_key="ticket.id", index=True)
    event: str = Field(max_length=40)
    recipient: str = Field(max_length=320, index=True)
    subject: str = Field(default="", sa_type=sa.Text)
    message_id: str = Field(max_length=998, sa_type=sa.Text, index=True)  # DSNs find their row by it
    message: bytes = Field(sa_type=sa.LargeBinary)
    status: str = Field(default="queued", max_length=20, index=True)
    attempts: int = 0
    created_at: datetime = _time(default_factory=utcnow)
    next_attempt_at: datetime = _time(default_factory=utcnow, index=True)
    sent_at: Optional[datetime] = _time(default=None)
    last_error: Optional[str] = Field(default=None, sa_type=sa.Text)
    # VERP return path (<local>+bounce-<id>-<sig>@<domain>), so a bounce names its row.
    envelope_sender: Optional[str] = Field(default=None, max_length=320)
    # A sender's lease on the row while it delivers; a crashed sender's rows come back when
    # it expires. claimed_by tells a sender whether the lease is still its own.
    claimed_until: Optional[datetime] = _time(default=None)
    claimed_by: Optional[str] = Field(default=None, max_length=100)


class SenderNotice(SQLModel, table=True):
    """When an unknown sender was last told how to get access (at most once a day)."""

    address: str = Field(primary_key=True, max_length=320)
    sent_at: datetime = _time(default_factory=utcnow)
