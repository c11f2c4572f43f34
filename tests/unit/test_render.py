"""Notification mail as it leaves (SPEC §5): language by recipient, HTML escaping, headers no
customer text can add to or alter, signed and threaded Message-IDs, List-Unsubscribe only with
a public URL, and the operator's override directory.

Messages are produced the real way (a mail through `mailgate deliver`'s code path, agent
actions through tickets.service and notify.queue) and read back with the email package.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import email.utils
import logging

import pytest
from sqlmodel import select

from mailgate import config as config_module, contacts, notify
from mailgate.app import App
from mailgate.ingest import pipe
from mailgate.mail import refs
from mailgate.models import Outbound, Subscription, ThreadMessage, Ticket, utcnow
from mailgate.notify.render import Headers, Renderer
from mailgate.tickets import service
from tests import world
from tests.support import SUPPORT, make_message

PUBLIC_URL = "https://desk.example.com"
EXPECTED_HEADERS = {
    "from", "to", "subject", "date", "message-id", "in-reply-to", "references", "auto-submitted",
    "x-auto-response-suppress", "content-language", "mime-version", "content-type",
    "list-unsubscribe", "list-unsubscribe-post",
}


def _app(make_config, name="mailgate.toml", **sections) -> App:
    # processed in this process (no child under the budget), so caplog sees what it logs
    app = App(config_module.load(make_config(name, processing={"processes": 0}, **sections))).prepare()
    world.build(app, seed_tickets=False)
    return app


@pytest.fixture
def app(make_config):
    app = _app(make_config, http={"public_url": PUBLIC_URL})
    yield app
    app.db.dispose()


def _mail(app: App, subject="Printer on fire", body="It smokes.", sender="Alice Adams <alice@acme.example>",
          message_id=None) -> str:
    raw = make_message(subject=subject, body=body, sender=sender, message_id=message_id)
    result = pipe.deliver(app, raw, email.utils.parseaddr(sender)[1], SUPPORT).result
    return result.ticket


def _rows(app: App, **where) -> list[Outbound]:
    with app.db.session() as s:
        query = select(Outbound).order_by(Outbound.id)
        for k, v in where.items():
            query = query.where(getattr(Outbound, k) == v)
        return list(s.exec(query))


def _parse(row: Outbound):
    return email.message_from_bytes(row.message, policy=email.policy.default)


def _parts(msg) -> tuple[str, str]:
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


def _agent(app: App, key: str, action) -> None:
    """An agent's action on KEY, queued in its transaction as the CLI and API do."""
    with app.db.session() as s:
        ticket = s.exec(select(Ticket).where(Ticket.key == key)).one()
        events = action(s, ticket)
        s.add(ticket)
        notify.queue(s, app, events)


def test_language_follows_the_recipient(app):
    key = _mail(app)
    alice, = _rows(app, recipient="alice@acme.example")
    bernd, = _rows(app, recipient="bernd@acme.example")
    en, de = _parse(alice), _parse(bernd)
    assert en["Content-Language"] == "en" and de["Content-Language"] == "de"
    en_text, en_html = _parts(en)
    de_text, de_html = _parts(de)
    assert "Hello Alice Adams" in en_text and "Status: Opened" in en_text and "Type:   Request" in en_text
    assert "Hallo Bernd Becker" in de_text and "Status: Eröffnet" in de_text and "Typ:    Anfrage" in de_text
    assert "Eröffnet" in de_html and "Opened" in en_html
    assert en["Subject"] == de["Subject"] == f"[{key}] Printer on fire"  # the subject threads replies: same in both

    _agent(app, key, lambda s, t: service.set_status(t, "clarification", utcnow()))
    de_status = _parse(_rows(app, recipient="alice@acme.example", event="status_changed")[0])
    assert '"Opened" to "Clarification required / On hold"' in _parts(de_status)[0]


def test_unknown_language_falls_back_to_english(app):
    with app.db.session() as s:
        c = contacts.contact(s, "carol@acme.example")
        c.language = "fr"  # not offered; an import from an older system might leave one
        s.add(c)
    _mail(app)
    carol, = _rows(app, recipient="carol@acme.example")
    assert _parse(carol)["Content-Language"] == "en"
    assert "Hello Carol Clark" in _parts(_parse(carol))[0]


def test_customer_text_is_escaped_in_html(app):
    key = _mail(app, subject="<script>alert(1)</script> & <b>co</b>", body="<img src=x onerror=alert(2)>")
    text, html = _parts(_parse(_rows(app, recipient="alice@acme.example")[0]))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<script>alert(1)</script>" in text  # plain text is shown as text, nothing to escape

    _agent(app, key, lambda s, t: service.add_comment(s, t, body="<a href='javascript:x'>click</a>", now=utcnow(),
                                                     agent="Sam <Support>")[1])
    text, html = _parts(_parse(_rows(app, event="comment_added")[0]))
    assert "<a href='javascript" not in html and "&lt;a href=&#39;javascript:x&#39;&gt;click&lt;/a&gt;" in html
    assert "Sam &lt;Support&gt; commented" in html


HOSTILE_SUBJECTS = [
    "=?utf-8?q?Hello=0D=0ABcc:_evil@attacker.example?=",  # CR LF inside an encoded word
    "=?utf-8?b?SGVsbG8NCkJjYzogZXZpbEBhdHRhY2tlci5leGFtcGxlDQoNCjxodG1sPg==?=",  # …and a body after it
    "Hello\x00Bcc: evil@attacker.example",
    "Hello =?utf-8?q?=0ATo:_evil@attacker.example=0A=0A?= there",
]


@pytest.mark.parametrize("subject", HOSTILE_SUBJECTS)
def test_a_subject_cannot_inject_headers(app, subject):
    raw = (f"From: Alice Adams <alice@acme.example>\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\n"
           f"Message-ID: <hostile@acme.example>\r\nDate: {email.utils.formatdate()}\r\n\r\nHello.\r\n")
    assert pipe.deliver(app, raw.encode(), "alice@acme.example", SUPPORT).result.ticket == "SD-1"
    for row in _rows(app):
        msg = _parse(row)
        assert {k.lower() for k in msg.keys()} == EXPECTED_HEADERS
        assert msg.get_all("To") == [msg["To"]] and msg["Bcc"] is None
        assert email.utils.getaddresses(msg.get_all("To")) == [(email.utils.parseaddr(msg["To"])[0], row.recipient)]
        assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"] and "\x00" not in msg["Subject"]
        assert msg["Subject"].startswith("[SD-1] Hello")
        assert msg.is_multipart() and [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_a_name_cannot_inject_headers(app):
    with app.db.session() as s:
        contacts.add_contact(s, "eve@acme.example", 'Eve\r\nBcc: evil@attacker.example\r\nX-Evil: "1" <m@x.example>, ',
                              "Acme", "en")
    _mail(app)
    eve, = _rows(app, recipient="eve@acme.example")
    msg = _parse(eve)
    assert {k.lower() for k in msg.keys()} == EXPECTED_HEADERS
    assert email.utils.getaddresses(msg.get_all("To"))[0][1] == "eve@acme.example"
    assert len(email.utils.getaddresses(msg.get_all("To"))) == 1
    assert msg["Bcc"] is None and msg["X-Evil"] is None


def test_renderer_sanitises_every_header_value(app, make_config):
    cfg = app.config
    renderer = Renderer(dataclasses.replace(cfg, outbound=dataclasses.replace(
        cfg.outbound, from_name="Desk\r\nBcc: evil@attacker.example")))
    headers = Headers(subject="A\r\nBcc: x@y.example\r\n\r\nbody", to_address="alice@acme.example",
                      to_name="Al\nice\x00", message_id="<mg.x@example.com>",
                      in_reply_to="<ok@x.example>\r\nBcc: y@z.example", references=["<a b@c>", "<fine@x.example>"],
                      unsubscribe_url="https://x.example/u\r\nBcc: z@z.example")
    raw = renderer.mail("unknown_sender_notice", ("en",), {"address": "a@b.example"}, headers, utcnow())
    msg = email.message_from_bytes(raw.message, policy=email.policy.default)
    assert msg["Bcc"] is None and msg["In-Reply-To"] is None  # a bad Message-ID is left out, not cleaned
    assert msg["References"] == "<fine@x.example>"
    assert msg["Subject"] == "A Bcc: x@y.example body"
    assert email.utils.getaddresses(msg.get_all("From")) == [("Desk Bcc: evil@attacker.example", "support@example.com")]
    assert msg["List-Unsubscribe"] == "<https://x.example/u Bcc: z@z.example>"


def test_message_id_is_signed_and_joins_the_thread(app):
    key = _mail(app, message_id="<first@acme.example>")
    first, = _rows(app, recipient="alice@acme.example")
    msg = _parse(first)
    assert msg["Message-ID"] == first.message_id
    assert app.signer.ticket_of(first.message_id) == key
    assert first.message_id.endswith("@example.com>")
    assert msg["In-Reply-To"] == "<first@acme.example>" and msg["References"] == "<first@acme.example>"
    with app.db.session() as s:
        assert s.get(ThreadMessage, refs.id_hash(first.message_id)) is not None

    _agent(app, key, lambda s, t: service.add_comment(s, t, body="On it.", now=utcnow(), agent="sam")[1])
    second = _parse(_rows(app, recipient="alice@acme.example", event="comment_added")[0])
    assert second["In-Reply-To"] == first.message_id
    assert second["References"].split() == ["<first@acme.example>", first.message_id]
    ids = {r.message_id for r in _rows(app)}
    assert len(ids) == len(_rows(app))  # unique per message


def test_list_unsubscribe_and_links_with_a_public_url(app):
    _mail(app)
    msg = _parse(_rows(app, recipient="bernd@acme.example")[0])
    link = msg["List-Unsubscribe"].strip("<>")
    assert link.startswith(f"{PUBLIC_URL}/notifications/")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = _parts(msg)
    assert f"Benachrichtigungen für SD-1 einschalten: {link}" in text and f'href="{link}"' in html
    assert b"List-Unsubscribe: <" + link.encode() + b">\r\n" in _rows(app, recipient="bernd@acme.example")[0].message


def test_no_links_without_a_public_url(make_config):
    app = _app(make_config, "no-url.toml")
    try:
        _mail(app)
        for row in _rows(app):
            msg = _parse(row)
            assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
            assert "/notifications/" not in "".join(_parts(msg))
    finally:
        app.db.dispose()


def test_override_directory_replaces_one_template(make_config, tmp_path, caplog):
    overrides = tmp_path / "my-templates"
    (overrides / "en").mkdir(parents=True)
    (overrides / "en" / "ticket_created.txt").write_text("Ours: {{ ticket.key }} for {{ recipient.name }}\n")
    (overrides / "de").mkdir()
    (overrides / "de" / "ticket_created.txt").write_text("{% if %}broken\n")
    app = _app(make_config, "override.toml", outbound={"templates_dir": str(overrides)})
    try:
        with caplog.at_level(logging.ERROR, logger="mailgate.notify"):
            _mail(app)
        text, html = _parts(_parse(_rows(app, recipient="alice@acme.example")[0]))
        assert text.strip() == "Ours: SD-1 for Alice Adams"
        assert "we have received your request" in html  # the HTML one was not overridden
        de_text, _ = _parts(_parse(_rows(app, recipient="bernd@acme.example")[0]))
        assert "Hallo Bernd Becker" in de_text  # a broken override falls back to the built-in one ...
        assert any("de/ticket_created.txt" in r.getMessage() for r in caplog.records)  # ... and says so
    finally:
        app.db.dispose()


def test_an_edited_override_is_used_after_a_reload(make_config, tmp_path):
    """Compiled templates are shared by the process's Environments (notify.render): what an
    operator edited must still be compiled anew at the reload, not served from that cache."""
    overrides = tmp_path / "my-templates"
    (overrides / "en").mkdir(parents=True)
    template = overrides / "en" / "ticket_created.txt"
    template.write_text("First: {{ ticket.key }}\n")
    app = _app(make_config, "edited.toml", outbound={"templates_dir": str(overrides)})
    try:
        app.renderer.warm_up()
        _mail(app, message_id="<before@acme.example>")
        template.write_text("Second: {{ ticket.key }}\n")
        app.renderer.reload()
        _mail(app, subject="Another", message_id="<after@acme.example>")
        texts = [_parts(_parse(row))[0].strip() for row in _rows(app, recipient="alice@acme.example")]
        assert texts == ["First: SD-1", "Second: SD-2"]
    finally:
        app.db.dispose()


def test_unknown_sender_notice_in_both_languages(app):
    pipe.deliver(app, make_message(sender="Stranger <stranger@else.example>"), "stranger@else.example", SUPPORT)
    row, = _rows(app)
    msg = _parse(row)
    assert row.event == "unknown_sender_notice" and row.ticket_id is None and row.recipient == "stranger@else.example"
    assert msg["Content-Language"] == "en, de" and msg["Auto-Submitted"] == "auto-generated"
    assert msg["To"] == "stranger@else.example"
    text, html = _parts(msg)
    assert "is not registered" in text and "nicht registriert" in text
    assert "service desk contact of your organisation" in text and "Ansprechpartner Ihrer Organisation" in text
    assert "nicht registriert" in html


def test_machine_headers_on_every_notification(app):
    key = _mail(app)
    _agent(app, key, lambda s, t: service.set_status(t, "resolved", utcnow()))
    for row in _rows(app):
        msg = _parse(row)
        assert msg["Auto-Submitted"] == "auto-generated" and msg["X-Auto-Response-Suppress"] == "All"
        assert msg["From"] == "Service Desk <support@example.com>"
        assert email.utils.parsedate_to_datetime(msg["Date"]).tzinfo is not None
    resolved = _parts(_parse(_rows(app, event="status_changed")[0]))[0]
    assert "reply \"close\"" in resolved and "after 50 days" in resolved


def test_choices_show_in_the_footer(app):
    key = _mail(app)
    with app.db.session() as s:
        ticket = s.exec(select(Ticket).where(Ticket.key == key)).one()
        s.add(Subscription(ticket_id=ticket.id, contact_id=contacts.contact(s, "bernd@acme.example").id, notify=True))
    _agent(app, key, lambda s, t: service.add_comment(s, t, body="Fixed?", now=utcnow(), agent="sam")[1])
    bernd = _parts(_parse(_rows(app, recipient="bernd@acme.example", event="comment_added")[0]))[0]
    assert "weil die Benachrichtigungen für SD-1 für Sie eingeschaltet sind" in bernd
    assert "Benachrichtigungen für SD-1 ausschalten" in bernd
