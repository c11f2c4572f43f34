"""Desks (SPEC §11): a desk's addresses open tickets with its prefix, numbered from 1; replies
thread by any desk's key; one mail to two desks opens one ticket in each, once; its mail
leaves from its address, name and templates; `ticket list --desk`, the API's filter,
/metrics by desk; check-config names what is wrong. The pipeline runs in process."""

from __future__ import annotations

import email
import email.policy
import json

import pytest
from sqlmodel import select

from mailgate import config as config_module, desks
from mailgate.app import App
from mailgate.config import ConfigError
from mailgate.core.pipeline import Pipeline
from mailgate.core.spool import Envelope
from mailgate.ingest import pipe
from mailgate.models import Inbound, Outbound, Ticket
from tests import world
from tests.support import SUPPORT, make_message

BILLING = "billing@example.com"
DESKS = [{"name": "billing", "addresses": [BILLING, "invoices@example.com"], "key_prefix": "BILL",
          "display_name": "Billing Team", "from_address": "billing@example.com"}]


@pytest.fixture
def config(make_config):
    return make_config("desks.toml", desks=DESKS)


@pytest.fixture
def app(config):
    app = App(config_module.load(config)).prepare()
    world.build(app, seed_tickets=False)
    yield app
    app.close()


def _deliver(app, raw: bytes, recipient: str | None, sender: str = "alice@acme.example"):
    return pipe.deliver(app, raw, sender, recipient).result


def _mail(to: str = BILLING, **kw) -> bytes:
    raw = make_message(**kw)
    return raw.replace(f"To: {SUPPORT}".encode(), f"To: {to}".encode(), 1)


def _rows(app, model, *where):
    with app.db.session() as s:
        return list(s.exec(select(model).where(*where).order_by(model.id)))


def test_each_desk_opens_tickets_with_its_own_prefix_from_one(app):
    assert _deliver(app, _mail(subject="Invoice wrong"), BILLING).ticket == "BILL-1"
    assert _deliver(app, make_message(subject="Printer"), SUPPORT).ticket == "SD-1"
    assert _deliver(app, _mail(subject="Second invoice"), "Invoices+urgent@Example.com").ticket == "BILL-2"
    assert _deliver(app, make_message(subject="Scanner"), SUPPORT).ticket == "SD-2"
    assert {t.key: t.desk for t in _rows(app, Ticket)} == {
        "BILL-1": "billing", "SD-1": "default", "BILL-2": "billing", "SD-2": "default"}


def test_a_reply_threads_by_any_desks_key_whichever_address_it_is_sent_to(app):
    _deliver(app, _mail(subject="Invoice wrong"), BILLING)
    reply = make_message(subject="Re: [BILL-1] Invoice wrong", body="Any news?")  # to support@, not billing@
    result = _deliver(app, reply, SUPPORT)
    assert (result.outcome, result.ticket) == ("comment_added", "BILL-1")
    assert [t.key for t in _rows(app, Ticket)] == ["BILL-1"]


def test_one_mail_to_two_desks_opens_one_ticket_in_each_and_each_only_once(app):
    raw = _mail(to=f"{BILLING}, {SUPPORT}", subject="Invoice and printer", message_id="<both@acme.example>")
    # Postfix's pipe hands over one recipient at a time: the same Message-ID twice
    assert _deliver(app, raw, BILLING).ticket == "BILL-1"
    assert _deliver(app, raw, SUPPORT).ticket == "SD-1"
    again = [_deliver(app, raw, r) for r in (BILLING, SUPPORT)]
    assert [(r.outcome, r.ticket) for r in again] == [("duplicate", "BILL-1"), ("duplicate", "SD-1")]
    # a reply to both desks is one comment; the other copy is a duplicate of it
    reply = _mail(to=f"{BILLING}, {SUPPORT}", subject="Re: [BILL-1] Invoice and printer", body="More.",
                  message_id="<reply-both@acme.example>")
    results = [_deliver(app, reply, r) for r in (SUPPORT, BILLING)]
    assert [(r.outcome, r.ticket) for r in results] == [("comment_added", "BILL-1"), ("duplicate", "BILL-1")]


def test_without_an_envelope_the_to_and_cc_name_the_desk(app):
    result = _deliver(app, _mail(to=f"someone@else.example, {BILLING}"), None)
    assert result.ticket == "BILL-1"
    assert _deliver(app, make_message(subject="Printer"), None).ticket == "SD-1"


def test_split_groups_recipients_by_desk_in_order(app):
    d = desks.of(app.config)
    assert d.split([SUPPORT]) == [[SUPPORT]]
    assert d.split([BILLING, "support+x@example.com", "invoices@example.com", SUPPORT]) == [
        [BILLING, "invoices@example.com"], ["support+x@example.com", SUPPORT]]
    assert d.of_message([], ["support+comment@example.com"]).name == "default"
    assert d.is_comment_address("Billing+Comment@example.com") and not d.is_comment_address(BILLING)


def test_a_desks_mail_leaves_from_its_address_and_name_with_its_templates(app, make_config, tmp_path):
    templates = tmp_path / "billing-templates" / "en"
    templates.mkdir(parents=True)
    (templates / "ticket_created.txt").write_text("Billing received {{ ticket.key }}.\n")
    config = make_config("desks.toml", desks=[{**DESKS[0], "templates_dir": str(templates.parent)}],
                         outbound={"from_name": "Service Desk"})
    app.config = config_module.load(config)
    _deliver(app, _mail(subject="Invoice wrong"), BILLING)
    _deliver(app, make_message(subject="Printer"), SUPPORT)
    mails = {row.ticket_id: email.message_from_bytes(row.message, policy=email.policy.default)
             for row in _rows(app, Outbound, Outbound.recipient == "alice@acme.example")}
    billing, support = (mails[t.id] for t in _rows(app, Ticket))
    assert billing["From"] == "Billing Team <billing@example.com>"
    assert support["From"] == "Service Desk <support@example.com>"
    assert "Billing received BILL-1." in billing.get_body(("plain",)).get_content()
    assert "we have received your request as ticket SD-1" in support.get_body(("plain",)).get_content()


def test_a_contact_who_gave_no_language_is_mailed_in_the_desks(app, cli, make_config):
    """SPEC §11: a desk's `language` is for contacts without a language — one added without
    --language (or imported without one); `contact list` shows the default desk's, en."""
    config = make_config("desks.toml", desks=[{**DESKS[0], "language": "de"}])
    app.config = config_module.load(config)
    assert cli("contact", "add", "otto@acme.example", "--name", "Otto", "--org", "Acme", config=config)[0] == 0
    assert cli("contact", "add", "olga@acme.example", "--name", "Olga", "--org", "Acme", "--language", "en",
               config=config)[0] == 0
    for sender in ("otto@acme.example", "olga@acme.example"):
        _deliver(app, _mail(subject="Rechnung falsch", sender=sender), BILLING, sender)
        _deliver(app, make_message(subject="Printer", sender=sender), SUPPORT, sender)
    languages = {(row.recipient, row.subject[1:].split("-")[0]): row.message.split(b"Content-Language: ")[1][:2]
                 for row in _rows(app, Outbound, Outbound.event == "ticket_created",
                                  Outbound.recipient.in_(["otto@acme.example", "olga@acme.example"]))}
    assert languages == {("otto@acme.example", "BILL"): b"de", ("otto@acme.example", "SD"): b"en",
                         ("olga@acme.example", "BILL"): b"en", ("olga@acme.example", "SD"): b"en"}
    code, out, _ = cli("contact", "list", "--json", config=config)
    assert {c["email"]: c["language"] for c in json.loads(out)}["otto@acme.example"] == "en"


def test_ticket_list_by_desk(app, cli, config):
    _deliver(app, _mail(subject="Invoice"), BILLING)
    _deliver(app, make_message(subject="Printer"), SUPPORT)
    code, out, _ = cli("ticket", "list", "--desk", "billing", "--json", config=config)
    assert code == 0 and [t["key"] for t in json.loads(out)] == ["BILL-1"]
    code, out, _ = cli("ticket", "list", "--desk", "default", "--json", config=config)
    assert [t["key"] for t in json.loads(out)] == ["SD-1"]
    code, _, err = cli("ticket", "list", "--desk", "bills", config=config)
    assert code == 1 and "unknown desk 'bills'" in err and "billing" in err


def test_metrics_count_messages_and_tickets_by_desk(app):
    for raw, recipient in ((_mail(subject="Invoice"), BILLING), (make_message(subject="Printer"), SUPPORT),
                           (_mail(subject="Invoice 2"), BILLING)):
        _deliver(app, raw, recipient)
    text = app.metrics.render().decode()
    assert 'mailgate_desk_messages_total{desk="billing",outcome="ticket_created"} 2.0' in text
    assert 'mailgate_desk_messages_total{desk="default",outcome="ticket_created"} 1.0' in text
    assert 'mailgate_tickets{desk="billing",status="opened"} 2.0' in text


def test_explain_names_the_desk_a_mail_would_open_a_ticket_at(app, cli, config, tmp_path):
    path = tmp_path / "invoice.eml"
    path.write_bytes(_mail(subject="Invoice"))
    code, out, _ = cli("explain", str(path), "--json", config=config)
    assert code == 0 and json.loads(out)["ticket"] == "BILL-1"
    code, out, _ = cli("explain", str(path), "--recipient", SUPPORT, "--json", config=config)
    assert json.loads(out)["ticket"] == "SD-1"
    assert _rows(app, Inbound) == []  # explain writes nothing
    code, _, err = cli("explain", str(path), "--recipient", "nobody@else.example", config=config)
    assert code == 1 and "not a support address" in err


def test_explain_of_the_pipeline_and_the_listener_agree_on_the_desk(app):
    explained = Pipeline(app).explain(_mail(subject="Invoice"), Envelope(sender="alice@acme.example", recipients=[]))
    assert explained["outcome"] == "ticket_created" and explained["ticket"] == "BILL-1"


@pytest.mark.parametrize("data, message", [
    ({"desks": [{**DESKS[0], "prefix": "B"}]}, "unknown key desks[0].prefix"),
    ({"desks": [{**DESKS[0], "key_prefix": "SD"}]}, "desks[0].key_prefix: 'SD' is taken by tickets.key_prefix"),
    ({"desks": [DESKS[0], {**DESKS[0], "name": "b2", "addresses": ["b2@example.com"]}]},
     "desks[1].key_prefix: 'BILL' is taken by desks[0].key_prefix"),
    ({"desks": [{**DESKS[0], "addresses": ["Support@example.com"]}]},
     "desks[0].addresses: 'Support@example.com' is taken by tickets.support_addresses"),
    ({"desks": [{**DESKS[0], "name": "default"}]}, "desks[0].name: 'default' names the desk of [tickets]"),
    ({"desks": [{**DESKS[0], "addresses": []}]}, "desks[0].addresses: at least one address"),
    ({"desks": [{**DESKS[0], "addresses": ["billing+x@example.com"]}]}, "desks[0].addresses"),
    ({"desks": [{**DESKS[0], "language": "fr"}]}, "desks[0].language"),
    ({"desks": [{**DESKS[0], "templates_dir": "/no/such/dir"}]}, "desks[0].templates_dir"),
    ({"desks": [DESKS[0]], "agents": [{"name": "sam", "token": "x" * 20, "desks": ["bills"]}]},
     "agents[0].desks: no desk 'bills'"),
])
def test_check_config_names_what_is_wrong_with_a_desk(data, message):
    with pytest.raises(ConfigError) as e:
        config_module.from_dict({"tickets": {"support_addresses": [SUPPORT]}, **data})
    assert message in str(e.value)


def test_desk_addresses_are_support_addresses(app):
    assert {BILLING, "invoices@example.com", SUPPORT} <= app.config.support_addresses
    assert pipe.deliver(app, make_message(), "alice@acme.example", "nobody@example.com").exit_code == 67
