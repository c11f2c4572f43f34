"""Agents are told (SPEC §11): an agent with an email and `notify = true` is mailed the new
tickets and the customers' comments of the desks they serve (confidential ones only in their
region), in their language, with their signed reply address in Reply-To; never their own
action. The pipeline and the CLI run in process; the mail is read from the outbox table."""

from __future__ import annotations

import email
import email.policy

import pytest
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.config import AgentConfig
from mailgate.ingest import pipe
from mailgate.models import Outbound, Ticket
from mailgate.notify import reply_address
from mailgate.signing import Signer
from tests import world
from tests.support import SUPPORT, make_message

BILLING = "billing@example.com"
AGENTS = [
    {"name": "sam", "token": "", "email": "Sam@corp.example", "notify": True, "language": "de"},
    {"name": "eva", "token": "eva-token-0123456789", "email": "eva@corp.example", "notify": True,
     "region": "eu", "desks": ["default"]},
    {"name": "ulf", "token": "", "email": "ulf@corp.example"},  # not told (notify is off)
]
DESKS = [{"name": "billing", "addresses": [BILLING], "key_prefix": "BILL", "display_name": "Billing Team"}]


@pytest.fixture
def app(make_config):
    config = make_config("agents.toml", agents=AGENTS, desks=DESKS)
    app = App(config_module.load(config)).prepare()
    world.build(app, seed_tickets=False)
    yield app
    app.close()


def _agent_mail(app, address: str) -> list:
    with app.db.session() as s:
        rows = s.exec(select(Outbound).where(Outbound.recipient == address).order_by(Outbound.id)).all()
    return [(row.event, email.message_from_bytes(row.message, policy=email.policy.default)) for row in rows]


def _text(message) -> str:
    return message.get_body(("plain",)).get_content()


def test_an_agent_is_told_of_a_new_ticket_with_the_customers_text_fields_commands_and_reply_address(app):
    pipe.deliver(app, make_message(subject="Printer on fire", body="It smokes since this morning."),
                 "alice@acme.example", SUPPORT)
    [(event, mail)] = _agent_mail(app, "eva@corp.example")
    assert event == "ticket_created" and mail["Subject"] == "[SD-1] Printer on fire"
    assert mail["From"] == "Service Desk <support@example.com>" and mail["Auto-Submitted"] == "auto-generated"
    reply_to = mail["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith("support+agent-") and reply_to.endswith("@example.com")
    assert reply_address.agent_of(app.signer, app.config.agents, reply_to).name == "eva"
    text = _text(mail)
    for expected in ("Alice Adams opened SD-1: Printer on fire", "It smokes since this morning.",
                     "Customer: Alice Adams <alice@acme.example>, Acme", "Status:   Opened",
                     "#status SLUG", "#internal", "support+comment@example.com"):
        assert expected in text, expected
    assert "Turn notifications" not in text and "Hello" not in text  # no customer footer
    # sam serves every desk and reads German
    [(_, german)] = _agent_mail(app, "sam@corp.example")
    assert "Alice Adams hat SD-1 eröffnet" in _text(german) and german["Content-Language"] == "de"
    assert _agent_mail(app, "ulf@corp.example") == []


def test_an_agent_hears_of_customer_comments_only_and_never_of_agents_actions(app, cli, make_config):
    pipe.deliver(app, make_message(subject="Printer on fire"), "alice@acme.example", SUPPORT)
    reply = make_message(subject="Re: [SD-1] Printer on fire", body="Now it beeps too.", sender="Bernd Becker <bernd@acme.example>")
    assert pipe.deliver(app, reply, "bernd@acme.example", SUPPORT).result.outcome == "comment_added"
    config = make_config("agents.toml", agents=AGENTS, desks=DESKS)
    assert cli("ticket", "comment", "SD-1", "--agent", "sam", "--body", "On it.", config=config)[0] == 0
    assert cli("ticket", "comment", "SD-1", "--agent", "sam", "--body", "note", "--internal", config=config)[0] == 0
    assert cli("ticket", "set", "SD-1", "--status", "in_progress", "--agent", "sam", config=config)[0] == 0
    told = [(event, _text(mail)) for event, mail in _agent_mail(app, "eva@corp.example")]
    assert [event for event, _ in told] == ["ticket_created", "comment_added"]
    assert "Bernd Becker commented on SD-1 (Printer on fire):" in told[1][1] and "Now it beeps too." in told[1][1]


def test_desks_and_regions_decide_which_agents_are_told(app):
    pipe.deliver(app, make_message(subject="Invoice wrong"), "alice@acme.example", BILLING)
    assert [e for e, _ in _agent_mail(app, "sam@corp.example")] == ["ticket_created"]  # every desk
    assert _agent_mail(app, "eva@corp.example") == []  # serves the default desk only
    [(_, mail)] = _agent_mail(app, "sam@corp.example")
    assert mail["From"] == "Billing Team <billing@example.com>"
    assert mail["Reply-To"].addresses[0].addr_spec.startswith("billing+agent-")
    # a confidential ticket of Acme (region eu): eva (eu) is told of a comment, sam (no region) is not
    pipe.deliver(app, make_message(subject="Printer"), "alice@acme.example", SUPPORT)
    with app.db.session() as s:
        s.exec(select(Ticket).where(Ticket.key == "SD-1")).one().confidential = True
    pipe.deliver(app, make_message(subject="Re: [SD-1] Printer", body="More."), "alice@acme.example", SUPPORT)
    assert [e for e, _ in _agent_mail(app, "eva@corp.example")] == ["ticket_created", "comment_added"]
    assert [e for e, _ in _agent_mail(app, "sam@corp.example")] == ["ticket_created", "ticket_created"]


def test_agents_are_never_held_back_by_the_loop_guard(app, make_config):
    """An agent who answers many tickets by mail is working: their notifications go at once."""
    from datetime import timedelta

    from mailgate.models import Inbound, utcnow

    with app.db.session() as s:  # eva's address: 20 comments within the hour
        now = utcnow()
        for n in range(20):
            s.add(Inbound(spool_id=f"x{n}", dedupe_key=f"k{n}", from_address="eva@corp.example", sha256="0" * 64,
                          raw_path="-", outcome="comment_added", received_at=now - timedelta(minutes=n)))
    for n in range(8):
        pipe.deliver(app, make_message(subject=f"Printer {n}"), "alice@acme.example", SUPPORT)
    with app.db.session() as s:
        rows = s.exec(select(Outbound).where(Outbound.recipient == "eva@corp.example")).all()
    assert len(rows) == 8 and all(row.last_error is None for row in rows)


def test_the_reply_address_is_per_agent_verifiable_unforgeable_and_opaque():
    signer, other = Signer(b"secret", "example.com"), Signer(b"another secret", "example.com")
    sam = AgentConfig(name="sam", email="sam@corp.example")
    eva = AgentConfig(name="eva", email="eva@corp.example")
    agents = (sam, eva)
    address = reply_address.address(signer, sam, "Support@Example.com")
    local = address.split("@")[0]
    assert address.endswith("@example.com") and local.startswith("support+agent-")
    assert "sam" not in local and "corp" not in local and local == local.lower()
    assert reply_address.agent_of(signer, agents, address) is sam
    assert reply_address.agent_of(signer, agents, address.upper()) is sam  # a mail system changed its case
    assert reply_address.address(signer, eva, "support@example.com") != address
    assert reply_address.agent_of(other, agents, address) is None  # another secret
    token = local.rsplit("-", 1)[1]
    forged = address.replace(token, ("0" if token[0] != "0" else "1") + token[1:])
    assert reply_address.agent_of(signer, agents, forged) is None
    moved = AgentConfig(name="sam", email="sam@new.example")  # a new email: the old address stops working
    assert reply_address.agent_of(signer, (moved, eva), address) is None
    for bogus in ("support@example.com", "support+agent-@example.com", "support+comment@example.com", "x"):
        assert reply_address.agent_of(signer, agents, bogus) is None


def test_check_config_names_what_is_wrong_with_an_agent():
    base = {"tickets": {"support_addresses": [SUPPORT]}}
    cases = [
        ({"name": "sam", "token": ""}, "agents[0].token: at least 16 characters"),
        ({"name": "sam", "token": "", "email": "support@example.com"}, "agents[0].email: 'support@example.com' is a support address"),
        ({"name": "sam", "token": "x" * 16, "notify": True}, "agents[0].notify: needs the agent's email"),
        ({"name": "sam", "token": "", "email": "sam@corp.example", "language": "fr"}, "agents[0].language"),
        ({"name": "sam", "token": "", "email": "not an address"}, "agents[0].email"),
    ]
    for agent, message in cases:
        with pytest.raises(config_module.ConfigError) as e:
            config_module.from_dict({**base, "agents": [agent]})
        assert message in str(e.value)
    with pytest.raises(config_module.ConfigError, match="two agents share one email"):
        config_module.from_dict({**base, "agents": [{"name": "a", "token": "", "email": "x@corp.example"},
                                                    {"name": "b", "token": "", "email": "X@corp.example"}]})
