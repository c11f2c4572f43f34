"""Forward on behalf (SPEC §11): a proven agent forwards a customer's mail — inline from
Gmail, Outlook, Thunderbird or Apple Mail, in English or German, or as an attached message —
to a desk's address, and a ticket opens for the customer (creator, organisation, the
original's text and attachments), with the agent's own text as an internal note; the
customer gets the usual ticket_created mail, the agent none about it. A forward of someone
who is not an active contact opens nothing, and only the agent is told. The fixtures are in
fixtures/emails/forward/ (the agents' proof: a DMARC pass from the trusted MTA)."""

from __future__ import annotations

import hashlib
import time

import pytest
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.ingest import pipe
from mailgate.mail import forwards
from mailgate.mail.parse import Limits, parse
from mailgate.models import Attachment, Comment, Contact, Outbound, Subscription, Ticket
from mailgate.tickets import by_mail
from tests import hostile, world
from tests.support import REPO, SUPPORT
from tests.unit.test_hostile import MEMORY_FACTOR, MEMORY_FLOOR, REFUSED, SECONDS, SIZES, _measured

FORWARDS = REPO / "fixtures" / "emails" / "forward"
SAM = "sam@corp.example"
AGENTS = [{"name": "sam", "token": "", "email": SAM, "notify": True},
          {"name": "eva", "token": "", "email": "eva@corp.example", "notify": True}]
EN = ("Printer on fire", "It smokes since this morning. The model is a LaserJet 4000")
DE = ("Drucker brennt", "Er raucht seit heute Morgen. Es ist ein LaserJet 4000.")
CASES = {  # fixture → (summary, original text, the agent's note, attachment names, participants)
    "gmail-en.eml": (*EN, "Hi, Alice called about this too - please take it.", ["printer.png"], ["bernd@acme.example"]),
    "gmail-de.eml": (*DE, "Bitte als Ticket anlegen.", [], []),
    "outlook-en.eml": (*EN, "Please open a ticket for Alice.", [], ["bernd@acme.example"]),
    "outlook-de.eml": (*DE, "Bitte anlegen, Kunde hat angerufen.", [], []),
    "thunderbird-en.eml": (*EN, "Please take this one.", [], []),
    "thunderbird-de.eml": (*DE, "Bitte übernehmen.", [], []),
    "apple-en.eml": (*EN, "Can you open a ticket for Alice?", [], []),
    "apple-de.eml": (*DE, "Kannst du ein Ticket für Alice anlegen?", [], []),
    "attached-outlook.eml": (*EN, "Alice's mail, attached. Looks like the fuser.", ["printer.png"], []),
}


@pytest.fixture
def app(make_config):
    config = make_config("agents.toml", agents=AGENTS, policy={"trusted_authserv_id": "mx.example.com"})
    app = App(config_module.load(config)).prepare()
    world.build(app, seed_tickets=False)
    yield app
    app.close()


def _one(app, model, *where):
    with app.db.session() as s:
        return list(s.exec(select(model).where(*where).order_by(model.id)))


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_a_forward_from_each_client_opens_the_customers_ticket(app, fixture):
    summary, text, note, files, participants = CASES[fixture]
    result = pipe.deliver(app, (FORWARDS / fixture).read_bytes(), SAM, SUPPORT).result
    assert (result.outcome, result.ticket) == ("ticket_created", "SD-1"), result.error
    [ticket] = _one(app, Ticket)
    [alice] = _one(app, Contact, Contact.email == "alice@acme.example")
    assert (ticket.summary, ticket.creator_id, ticket.organisation_id) == (summary, alice.id, alice.organisation_id)
    assert text in ticket.description and "Forwarded" not in ticket.description and "From:" not in ticket.description
    [comment] = _one(app, Comment)
    assert (comment.author_agent, comment.internal) == ("sam", True) and comment.body.startswith(note)
    assert "smokes" not in comment.body and "raucht" not in comment.body
    assert [a.filename for a in _one(app, Attachment, Attachment.comment_id.is_(None))] == files
    with app.db.session() as s:
        subscribed = s.exec(select(Contact.email).join(Subscription, Subscription.contact_id == Contact.id)).all()
    assert sorted(subscribed) == participants
    told = {(row.event, row.recipient) for row in _one(app, Outbound)}
    assert ("ticket_created", "alice@acme.example") in told  # the usual mail to the customer
    assert ("ticket_created", "eva@corp.example") in told  # the other agent is told
    assert not any(recipient == SAM for _, recipient in told)  # the agent's own action


def test_a_forward_with_commands_sets_the_tickets_first_fields(app):
    raw = (FORWARDS / "thunderbird-en.eml").read_bytes().replace(
        b"Please take this one.", b"#type incident\r\n#priority P2\r\n\r\nPlease take this one.")
    assert pipe.deliver(app, raw, SAM, SUPPORT).result.outcome == "ticket_created"
    [ticket] = _one(app, Ticket)
    assert (ticket.type, ticket.priority, ticket.status) == ("incident", "P2", "opened")
    assert [r.event for r in _one(app, Outbound, Outbound.recipient == "alice@acme.example")] == ["ticket_created"]
    bad = raw.replace(b"P2", b"P7").replace(b"Message-ID: <9", b"Message-ID: <8").replace(
        b"<8f3c2a1e", b"<7f3c2a1e")
    result = pipe.deliver(app, bad, SAM, SUPPORT).result
    assert result.outcome == "rejected_forward" and "'P7'" in result.error and len(_one(app, Ticket)) == 1


def test_a_forward_of_someone_who_is_no_contact_opens_nothing_and_only_the_agent_is_told(app):
    result = pipe.deliver(app, (FORWARDS / "gmail-stranger.eml").read_bytes(), SAM, SUPPORT).result
    assert (result.outcome, result.ticket) == ("rejected_forward", None)
    assert "stranger@else.example is not an active contact" in result.error
    assert _one(app, Ticket) == [] and _one(app, Comment) == []
    [row] = _one(app, Outbound)
    assert (row.event, row.recipient) == ("agent_notice", SAM)
    assert b"stranger@else.example is not an active contact" in row.message.replace(b"=\r\n", b"")


def test_agent_mail_that_names_no_ticket_and_forwards_nothing_is_refused(app):
    raw = (FORWARDS / "thunderbird-en.eml").read_bytes().split(b"-------- Forwarded Message")[0]
    result = pipe.deliver(app, raw, SAM, SUPPORT).result
    assert result.outcome == "rejected_forward" and "forwards no message" in result.error
    assert _one(app, Ticket) == []


def test_a_forward_that_is_not_proven_is_a_customers_mail(app):
    """Without the trusted MTA's pass (or the reply address) the agent is a stranger."""
    raw = (FORWARDS / "gmail-en.eml").read_bytes().replace(b"mx.example.com;", b"mx.evil.example;")
    assert pipe.deliver(app, raw, SAM, SUPPORT).result.outcome == "rejected_unknown_sender"
    assert _one(app, Ticket) == []


# --- the parser on its own --------------------------------------------------------------------


def test_the_sender_is_read_as_clients_write_it():
    for value, expected in [
        ("Alice Adams <alice@acme.example>", ("Alice Adams", "alice@acme.example")),
        ('"Adams, Alice" <Alice@Acme.example>', ("Adams, Alice", "alice@acme.example")),
        ("Alice Adams [mailto:alice@acme.example]", ("Alice Adams", "alice@acme.example")),
        ("alice@acme.example", ("", "alice@acme.example")),
        ("Alice Adams", ("Alice Adams", None)),
    ]:
        found = forwards.inline(f"---------- Forwarded message ---------\nFrom: {value}\nSubject: x\n\nbody")
        assert (found.sender_name, found.sender_address) == expected, value


@pytest.mark.parametrize("text", [
    "From: " + "a<" * 500_000,  # what took email-forward-parser seconds at 8 KB
    ("---------- Forwarded message ---------\n" + "From: x\n" * 11 + "\n") * 5_000,
    "---------- Forwarded message ---------\nFrom: " + "a" * 1_000_000 + "\n\nbody",
    "Begin forwarded message:\n" + "> " * 400_000,
    "\n" * 2_000_000,
])
def test_finding_a_forward_is_bounded_whatever_the_text(text):
    started = time.process_time()
    forwards.inline(text)
    assert time.process_time() - started < 1.0



class _Digests:
    """A blob store that only computes digests (nothing is written)."""

    @staticmethod
    def put(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("shape", sorted(set(hostile.SHAPES) - REFUSED))
def test_hostile_mail_as_a_proven_agents_is_read_within_its_budget(shape):
    """Every hostile shape of tests/hostile.py, sent by a proven agent: the agent's path (the
    commands, the quote cut, looking for a forward inline and attached) within the budgets of
    tests/unit/test_hostile.py."""
    app = App(config_module.from_dict({"agents": AGENTS, "policy": {"trusted_authserv_id": "mx.example.com"},
                                       "security": {"secret": "s" * 32}}))
    raw = hostile.SHAPES[shape](SIZES[shape]).replace(
        b"From: Alice Adams <alice@acme.example>\r\n", b"From: Sam Agent <sam@corp.example>\r\n"
        b"Authentication-Results: mx.example.com; dmarc=pass header.from=corp.example\r\n", 1)
    parsed = parse(raw)
    mail, seconds, peak = _measured(lambda: by_mail.prepare(app, parsed, [], Limits(), _Digests()))
    assert mail is not None and mail.proof.agent.name == "sam", shape
    assert seconds < SECONDS, f"{shape}: {seconds:.2f} s"
    assert peak < max(MEMORY_FLOOR, MEMORY_FACTOR * len(raw)), f"{shape}: {peak / 1e6:.1f} MB"
