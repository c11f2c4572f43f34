"""The test world: organisations, contacts and seed tickets (see fixtures/emails/manifest.toml)."""

from __future__ import annotations

from mailgate.app import App
from mailgate import contacts
from mailgate.ingest import pipe
from tests.support import SUPPORT, make_message

CONTACTS = [
    ("alice@acme.example", "Alice Adams", "Acme", "en"),
    ("bernd@acme.example", "Bernd Becker", "Acme", "de"),
    ("carol@acme.example", "Carol Clark", "Acme", "en"),
    ("dave@acme.example", "Dave Dorn", "Acme", "en"),
    ("gina@globex.example", "Gina Green", "Globex", "en"),
]
SEEDS = [
    ("Alice Adams <alice@acme.example>", "Login page shows error 500", "<seed-sd1@acme.example>"),
    ("Gina Green <gina@globex.example>", "Globex export broken", "<seed-sd2@globex.example>"),
]


def build(app: App, seed_tickets: bool = True) -> None:
    """Acme (region eu) and Globex with their contacts; dave disabled; SD-1 and SD-2 in review."""
    with app.db.session() as s:
        contacts.add_organisation(s, "Acme", "eu")
        contacts.add_organisation(s, "Globex")
        for email, name, org, language in CONTACTS:
            contacts.add_contact(s, email, name, org, language)
        contacts.disable_contact(s, "dave@acme.example")
    if not seed_tickets:
        return
    for sender, subject, message_id in SEEDS:
        raw = make_message(subject=subject, body=f"Seed ticket: {subject}.", sender=sender, message_id=message_id)
        result = pipe.deliver(app, raw, sender.split("<")[1].rstrip(">"), SUPPORT).result
        assert result.outcome == "ticket_created", result
    set_status(app, "SD-1", "in_review")
    set_status(app, "SD-2", "in_review")


def set_status(app: App, key: str, status: str) -> None:
    from sqlmodel import select

    from mailgate.models import Ticket, utcnow
    from mailgate.tickets import service

    with app.db.session() as s:
        ticket = s.exec(select(Ticket).where(Ticket.key == key)).one()
        service.set_status(ticket, status, utcnow())
        s.add(ticket)
