"""Agents answer by mail (SPEC §11): a proven agent's reply is a public comment by agent:NAME
that reaches the customer; to the comment address it is an internal note; the commands act
like `ticket set`, and an invalid one applies nothing and the agent is told why; mail from an
agent's address that nothing proves is a customer's. The pipeline runs in process."""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
from email.message import EmailMessage

import pytest
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.core.pipeline import Pipeline
from mailgate.core.spool import Envelope
from mailgate.ingest import pipe
from mailgate.mail import commands
from mailgate.models import Comment, Inbound, Outbound, Ticket
from mailgate.notify import reply_address
from tests import world
from tests.support import SUPPORT

SAM = "sam@corp.example"
AGENTS = [{"name": "sam", "token": "", "email": SAM, "notify": True},
          {"name": "rita", "token": "", "email": "rita@corp.example", "read_only": True}]
TRUSTED = "mx.example.com"
QUOTE = "\n\nOn Mon, 1 Dec 2026 at 10:00, Service Desk <support@example.com> wrote:\n> Alice Adams opened SD-1\n> It smokes.\n"


@pytest.fixture
def app(make_config):
    config = make_config("agents.toml", agents=AGENTS, policy={"trusted_authserv_id": TRUSTED})
    app = App(config_module.load(config)).prepare()
    world.build(app)  # SD-1 (alice, Acme) and SD-2 (gina, Globex), in review
    yield app
    app.close()


def _reply_address(app, name="sam") -> str:
    agent = next(a for a in app.config.agents if a.name == name)
    return reply_address.address(app.signer, agent, SUPPORT)


def _mail(body: str, *, sender=f"Sam Agent <{SAM}>", to=SUPPORT, subject="Re: [SD-1] Login page shows error 500",
          headers=None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"], msg["Message-ID"] = email.utils.formatdate(), email.utils.make_msgid(domain="corp.example")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


def _by_reply_address(app, body: str, **kw):
    """BODY from sam to sam's signed reply address (as a reply to the notification would go)."""
    to = _reply_address(app)
    return pipe.deliver(app, _mail(body, to=to, **kw), SAM, to).result


def _ticket(app, key="SD-1") -> Ticket:
    with app.db.session() as s:
        return s.exec(select(Ticket).where(Ticket.key == key)).one()


def _comments(app, key="SD-1") -> list[Comment]:
    with app.db.session() as s:
        ticket = s.exec(select(Ticket).where(Ticket.key == key)).one()
        return list(s.exec(select(Comment).where(Comment.ticket_id == ticket.id).order_by(Comment.id)))


def _outbound(app, **where) -> list[tuple[str, str, object]]:
    with app.db.session() as s:
        rows = s.exec(select(Outbound).where(*(getattr(Outbound, k) == v for k, v in where.items()))
                      .order_by(Outbound.id)).all()
    return [(r.event, r.recipient, email.message_from_bytes(r.message, policy=email.policy.default)) for r in rows]


def _clear_outbox(app) -> None:
    with app.db.session() as s:
        for row in s.exec(select(Outbound)).all():
            s.delete(row)


def test_a_reply_to_the_signed_address_is_a_public_comment_that_reaches_the_customer(app):
    _clear_outbox(app)
    result = _by_reply_address(app, "We found it: a broken cache." + QUOTE)
    assert (result.outcome, result.ticket) == ("comment_added", "SD-1")
    comment = _comments(app)[-1]
    assert (comment.author_agent, comment.body, comment.internal) == ("sam", "We found it: a broken cache.", False)
    assert "> It smokes." in comment.full_body  # the quote was cut, and kept
    mails = _outbound(app)
    assert [(e, r) for e, r, _ in mails] == [("comment_added", "alice@acme.example")]  # no agent mail of his own
    text = mails[0][2].get_body(("plain",)).get_content()
    assert "sam commented on SD-1" in text and "We found it: a broken cache." in text
    assert mails[0][2]["From"] == "Service Desk <support@example.com>"


def test_a_dmarc_pass_proves_the_agent_at_the_plain_support_address(app):
    auth = {"Authentication-Results": f"{TRUSTED}; dkim=pass header.d=corp.example; dmarc=pass header.from=corp.example"}
    result = pipe.deliver(app, _mail("Fixed.", headers=auth), SAM, SUPPORT).result
    assert result.outcome == "comment_added" and _comments(app)[-1].author_agent == "sam"


def test_mail_to_the_comment_address_is_an_internal_note_that_reaches_no_customer(app):
    _clear_outbox(app)
    auth = {"Authentication-Results": f"{TRUSTED}; dmarc=pass header.from=corp.example"}
    result = pipe.deliver(app, _mail("Probably the SSO bug.", to="support+comment@example.com", headers=auth),
                          SAM, "support+comment@example.com").result
    assert result.outcome == "comment_added"
    note = _comments(app)[-1]
    assert (note.author_agent, note.body, note.internal) == ("sam", "Probably the SSO bug.", True)
    assert _outbound(app) == []


@pytest.mark.parametrize("body, fields, comment", [
    ("#status in_progress\n\nWe are on it.", {"status": "in_progress"}, ("We are on it.", False)),
    ("#type software_defect\n#priority p2", {"type": "software_defect", "priority": "P2"}, None),
    ("#status Resolved\n", {"status": "resolved"}, None),
    ("#internal\nCustomer is grumpy.", {}, ("Customer is grumpy.", True)),
    ("#type incident\n#internal\n#priority P1\n\nEscalated to ops.", {"type": "incident", "priority": "P1"},
     ("Escalated to ops.", True)),
])
def test_each_command_acts_like_ticket_set(app, body, fields, comment):
    before = len(_comments(app))
    result = _by_reply_address(app, body + QUOTE)
    ticket = _ticket(app)
    for name, value in fields.items():
        assert getattr(ticket, name) == value, name
    added = _comments(app)[before:]
    assert [(c.body, c.internal) for c in added] == ([comment] if comment else [])
    assert result.outcome == ("comment_added" if comment else "ticket_changed")
    assert not any("#" in c.body for c in added)  # command lines are not part of the comment


def test_a_comment_and_changes_are_one_action_one_mail_per_customer(app):
    _clear_outbox(app)
    _by_reply_address(app, "#status resolved\nThe cache is fixed; please check." + QUOTE)
    mails = _outbound(app, recipient="alice@acme.example")
    assert [e for e, _, _ in mails] == ["status_changed"]
    text = mails[0][2].get_body(("plain",)).get_content()
    assert 'sam changed SD-1' in text and '"Resolved"' in text
    assert "sam wrote:" in text and "The cache is fixed; please check." in text


@pytest.mark.parametrize("body, named", [
    ("#status resolvd\nDone.", "'resolvd'"),
    ("#priority P2\nDone.", "not to request"),  # a priority belongs to incidents and defects
    ("#type incident\n#priority P9", "'P9'"),
    ("#stauts resolved\nDone.", "#stauts"),
    ("#status\nDone.", "#status needs a value"),
    ("#internal\n", "#internal needs a note"),
    ("#status resolved\n#status closed", "given twice"),
])
def test_an_invalid_command_changes_nothing_and_the_agent_is_told_why(app, body, named):
    before = (_ticket(app).status, _ticket(app).type, _ticket(app).priority, len(_comments(app)))
    _clear_outbox(app)
    result = _by_reply_address(app, body + QUOTE)
    assert result.outcome == "rejected_command" and named in result.error
    after = (_ticket(app).status, _ticket(app).type, _ticket(app).priority, len(_comments(app)))
    assert after == before
    [(event, to, mail)] = _outbound(app)
    assert (event, to) == ("agent_notice", SAM)
    assert named in mail.get_body(("plain",)).get_content() and mail["In-Reply-To"]
    assert mail["Subject"].startswith("[SD-1] Not applied: Re: [SD-1]")


def test_a_reply_to_the_agents_notice_with_the_corrected_command_is_proven(app):
    _clear_outbox(app)
    _by_reply_address(app, "#status resolvd\nDone." + QUOTE)
    [(_, _, notice)] = _outbound(app)
    reply_to = notice["Reply-To"].addresses[0].addr_spec
    assert reply_to == _reply_address(app)  # the agent's own signed address, as on every agent mail
    raw = _mail("#status resolved\nDone." + QUOTE, to=reply_to, subject=f"Re: {notice['Subject']}",
                headers={"In-Reply-To": notice["Message-ID"]})
    result = pipe.deliver(app, raw, SAM, reply_to).result
    assert (result.outcome, result.ticket) == ("comment_added", "SD-1") and _ticket(app).status == "resolved"


def test_the_signed_address_proves_the_agent_writing_from_another_address_of_theirs(app):
    """The address is the proof (SPEC §11): an alias, or the phone's account, is the agent too."""
    to = _reply_address(app)
    raw = _mail("#status in_progress\nOn it, from my phone." + QUOTE, sender="Sam <sam.agent@mobile.example>", to=to)
    result = pipe.deliver(app, raw, "sam.agent@mobile.example", to).result
    assert result.outcome == "comment_added"
    assert (_comments(app)[-1].author_agent, _ticket(app).status) == ("sam", "in_progress")
    again = _mail("More from my phone." + QUOTE, sender="Sam <sam.agent@mobile.example>", to=to)
    explained = Pipeline(app).explain(again, Envelope(sender="sam.agent@mobile.example", recipients=[to]))
    assert any("from another address of theirs" in r for r in explained["reasons"])


@pytest.mark.parametrize("sender, to, cc, outcome", [
    # someone the agent copied in, answering to all: the agent's own address is among the recipients
    ("Val Vendor <val@supplier.example>", SAM, "REPLY", "rejected_unknown_sender"),
    ("Colin Colleague <colin@corp.example>", "REPLY", SAM, "rejected_unknown_sender"),
    # a contact writes as themselves, active or not
    ("Alice Adams <alice@acme.example>", "REPLY", "", "comment_added"),
    ("Dave Dorn <dave@acme.example>", "REPLY", "", "rejected_unknown_sender"),
    # another agent's From is that agent's, proven or not: rita's is not proven here
    ("Rita <rita@corp.example>", "REPLY", "", "rejected_unknown_sender"),
])
def test_mail_at_the_signed_address_that_is_plainly_someone_elses_is_not_the_agents(app, sender, to, cc, outcome):
    reply = _reply_address(app)
    to, cc = (reply if x == "REPLY" else x for x in (to, cc))
    raw = _mail("#status resolved\nSee below." + QUOTE, sender=sender, to=to, headers={"Cc": cc} if cc else None)
    address = email.utils.parseaddr(sender)[1]
    result = pipe.deliver(app, raw, address, reply).result
    assert result.outcome == outcome
    assert _ticket(app).status == "in_review" and not any(c.author_agent for c in _comments(app))


def test_no_unknown_sender_notice_goes_to_an_agents_address(app):
    """Unproven mail from an agent's address is a stranger's, but the agent is not told to ask
    for access, nor does a forger of the agent's From get us to mail the agent."""
    _clear_outbox(app)
    result = pipe.deliver(app, _mail("#status resolved\nDone."), SAM, SUPPORT).result
    assert result.outcome == "rejected_unknown_sender" and "agent sam" in result.error
    assert _outbound(app) == []
    stranger = pipe.deliver(app, _mail("Hello?", sender="olga@stranger.example"), "olga@stranger.example", SUPPORT)
    assert stranger.result.outcome == "rejected_unknown_sender"
    assert [(e, r) for e, r, _ in _outbound(app)] == [("unknown_sender_notice", "olga@stranger.example")]


def test_rules_of_the_ticket_and_the_agent_apply_too(app):
    from tests.world import set_status

    set_status(app, "SD-2", "closed")
    result = _by_reply_address(app, "Reopening this.", subject="Re: [SD-2] Globex export broken")
    assert result.outcome == "rejected_command" and "closed is final" in result.error
    to = _reply_address(app, "rita")
    rita = pipe.deliver(app, _mail("#status resolved", sender="rita@corp.example", to=to), "rita@corp.example", to).result
    assert rita.outcome == "rejected_command" and "may read, not change" in rita.error
    assert _ticket(app).status == "in_review"


def test_a_forged_agent_from_is_a_customers_mail_and_resolves_nothing(app):
    forged = [
        _mail("#status resolved\nDone."),  # no proof at all
        _mail("#status resolved", to=_reply_address(app).replace("support+agent-", "support+agent-0")),  # a made-up token
        _mail("#status resolved", headers={"Authentication-Results": "evil.example; dmarc=pass header.from=corp.example"}),
        _mail("#status resolved", headers={"Authentication-Results": f"{TRUSTED}; dmarc=pass header.from=other.example"}),
    ]
    for raw in forged:
        result = pipe.deliver(app, raw, SAM, SUPPORT).result
        assert result.outcome == "rejected_unknown_sender"  # sam is no contact: a stranger
    assert _ticket(app).status == "in_review" and not any(c.author_agent for c in _comments(app))
    # a customer answering to all, the agent's reply address among them, writes as themselves
    to = _reply_address(app)
    customer = pipe.deliver(app, _mail("#status resolved\nThanks!", sender="Alice Adams <alice@acme.example>", to=to),
                            "alice@acme.example", to).result
    assert customer.outcome == "comment_added"
    assert _comments(app)[-1].author_agent is None and _ticket(app).status == "in_review"


def test_explain_says_why_an_agents_mail_counts_or_not(app):
    raw = _mail("#status in_progress\nOn it.", to=_reply_address(app))
    explained = Pipeline(app).explain(raw, Envelope(sender=SAM, recipients=[]))
    assert explained["outcome"] == "comment_added" and explained["comment_of"] == "SD-1"
    assert any("proven: sent to the agent's signed reply address" in r for r in explained["reasons"])
    assert any("status in_review → in_progress" in r for r in explained["reasons"])
    assert {"event": "status_changed", "to": "alice@acme.example"} in explained["notifications"]
    forged = Pipeline(app).explain(_mail("#status resolved"), Envelope(sender=SAM, recipients=[]))
    assert forged["outcome"] == "rejected_unknown_sender"
    assert any("neither the signed reply address nor a DMARC" in r for r in forged["reasons"])
    with app.db.session() as s:
        assert s.exec(select(Inbound)).all()[-1].outcome == "ticket_created"  # explain wrote nothing


def test_inbox_list_shows_what_became_of_agent_mail(app, cli, make_config):
    _by_reply_address(app, "#status bogus")
    _by_reply_address(app, "#status in_progress")
    config = make_config("agents.toml", agents=AGENTS, policy={"trusted_authserv_id": TRUSTED})
    code, out, _ = cli("inbox", "list", "--json", config=config)
    rows = json.loads(out)[-2:]
    assert [(r["outcome"], r["ticket"], r["sender"]) for r in rows] == [
        ("rejected_command", "SD-1", SAM), ("ticket_changed", "SD-1", SAM)]
    assert "unknown status 'bogus'" in rows[0]["error"]


# --- the command lines themselves ---------------------------------------------------------------


def test_commands_are_read_from_the_top_only_and_the_rest_is_the_text():
    found, rest = commands.read("\n#status In Progress\n\n#PRIORITY p1\nHello #status closed\n#type x")
    assert (found.status, found.priority, found.type, found.problems) == ("in_progress", "P1", None, [])
    assert rest == "Hello #status closed\n#type x"
    found, rest = commands.read("Thanks!\n#status closed")
    assert found.fields == {} and rest == "Thanks!\n#status closed"
    found, rest = commands.read("#1 priority: the invoice")  # not a command word: text
    assert found.lines == 0 and rest == "#1 priority: the invoice"


def test_reading_commands_is_bounded_whatever_the_text():
    import time

    hostile = "#internal\n" * 100_000 + "x" * 1_000_000
    started = time.process_time()
    found, rest = commands.read(hostile)
    assert time.process_time() - started < 0.5
    assert found.lines == commands.MAX_LINES and rest.startswith("#internal")
    found, _ = commands.read("#status " + "a" * 10_000)  # a line that long is text
    assert found.lines == 0
