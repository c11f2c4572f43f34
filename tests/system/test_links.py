"""The signed notification links over real HTTP (the daemon's HTTP side, served in the test
process): GET shows the state, POST switches, RFC 8058 one-click turns off; forged, borrowed
and misdirected tokens change nothing."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest
import sqlalchemy as sa
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.models import Contact, Outbound, Ticket
from mailgate.notify import tokens
from tests import world
from tests.inprocess import running_http
from tests.relay import free_port
from tests.support import cli_json


@pytest.fixture
def served(make_config):
    """The HTTP side on the port its public URL names, and the world's notifications."""
    port = free_port()
    config = make_config(http={"port": port, "public_url": f"http://127.0.0.1:{port}/"})
    app = App(config_module.load(config)).prepare()
    world.build(app)
    with running_http(app) as bound:
        assert bound == port
        yield app, None
    app.close()


def _link(app: App, recipient: str, key: str = "SD-1") -> str:
    """The on/off link of RECIPIENT's notification about KEY, as the mail carries it."""
    with app.db.session() as s:
        ticket = s.exec(select(Ticket).where(Ticket.key == key)).one()
        row = s.exec(select(Outbound).where(Outbound.recipient == recipient, Outbound.ticket_id == ticket.id)).first()
    msg = email.message_from_bytes(row.message, policy=email.policy.default)
    link = msg["List-Unsubscribe"].strip("<>")
    assert link in msg.get_body(("plain",)).get_content()
    return link


def _request(url: str, form: dict | None = None) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _subscriptions(cli, key: str = "SD-1") -> dict[str, bool]:
    return {s["contact"]: s["notify"] for s in cli_json(cli, "ticket", "show", key)["subscriptions"]}


def _ids(app: App, key: str | None = None, email_address: str | None = None) -> tuple[int | None, int | None]:
    with app.db.session() as s:
        ticket = s.exec(select(Ticket).where(Ticket.key == key)).first() if key else None
        contact = s.exec(select(Contact).where(Contact.email == email_address)).first() if email_address else None
        return (ticket.id if ticket else None), (contact.id if contact else None)


def _tampered(app: App, link: str, key: str | None = None, email_address: str | None = None,
              sig: str | None = None) -> str:
    """LINK with another ticket or contact put into its payload, keeping its signature."""
    base, token = link.rsplit("/", 1)
    payload, signature = token.split(".")
    old_ticket, old_contact = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode().split(":")
    ticket_id, contact_id = _ids(app, key, email_address)
    payload = base64.urlsafe_b64encode(f"{ticket_id or old_ticket}:{contact_id or old_contact}".encode()).decode().rstrip("=")
    return f"{base}/{payload}.{sig or signature}"


def test_get_shows_the_state_and_post_switches(served, cli):
    app, _ = served
    link = _link(app, "bernd@acme.example")
    status, page = _request(link)
    assert status == 200
    assert "Benachrichtigungen für SD-1" in page and "Login page shows error 500" in page
    assert "<strong>ausgeschaltet</strong>" in page and 'name="notify" value="on"' in page
    assert _subscriptions(cli) == {}  # looking changes nothing

    status, page = _request(link, {"notify": "on"})
    assert status == 200 and "Gespeichert" in page and "<strong>eingeschaltet</strong>" in page
    assert _subscriptions(cli) == {"bernd@acme.example": True}
    status, page = _request(link, {"notify": "off"})
    assert status == 200 and _subscriptions(cli) == {"bernd@acme.example": False}
    assert _request(link, {"notify": "maybe"})[0] == 400


def test_one_click_unsubscribe_turns_notifications_off(served, cli):
    app, _ = served
    link = _link(app, "alice@acme.example")
    assert "<strong>on</strong>" in _request(link)[1]  # the creator starts with notifications on
    status, body = _request(link, {"List-Unsubscribe": "One-Click"})
    assert status == 200
    assert _subscriptions(cli) == {"alice@acme.example": False}
    assert "<strong>off</strong>" in _request(link)[1]


def test_a_forged_token_changes_nothing(served, cli):
    app, _ = served
    link = _link(app, "bernd@acme.example")
    forged = [
        _tampered(app, link, sig="0" * 20),
        link[:-1] + ("0" if link[-1] != "0" else "1"),
        link.rsplit(".", 1)[0] + ".",
        link.rsplit("/", 1)[0] + "/garbage",
        link.rsplit("/", 1)[0] + "/" + tokens.make(app.signer.__class__(b"another-secret", "example.com"),
                                                   *_ids(app, "SD-1", "bernd@acme.example")),
    ]
    for url in forged:
        assert _request(url)[0] == 404, url
        assert _request(url, {"notify": "on"})[0] == 404, url
        assert _request(url, {"List-Unsubscribe": "One-Click"})[0] == 404, url
    assert _subscriptions(cli) == {}


def test_another_contacts_token_cannot_switch_this_contact(served, cli):
    app, _ = served
    bernds = _link(app, "bernd@acme.example")
    as_carol = _tampered(app, bernds, email_address="carol@acme.example")  # bernd's signature, carol's address
    assert _request(as_carol, {"notify": "on"})[0] == 404
    assert _request(as_carol, {"List-Unsubscribe": "One-Click"})[0] == 404
    alices = _link(app, "alice@acme.example")
    assert _request(_tampered(app, alices, email_address="bernd@acme.example"), {"notify": "on"})[0] == 404
    assert _subscriptions(cli) == {}
    assert _request(bernds, {"notify": "on"})[0] == 200  # bernd's own link switches bernd only
    assert _subscriptions(cli) == {"bernd@acme.example": True}


def test_a_token_for_another_ticket_is_refused(served, cli):
    app, _ = served
    ginas = _link(app, "gina@globex.example", "SD-2")
    assert _request(_tampered(app, ginas, key="SD-1"), {"notify": "on"})[0] == 404
    assert _request(_tampered(app, _link(app, "alice@acme.example"), key="SD-2"), {"notify": "off"})[0] == 404
    assert _subscriptions(cli, "SD-1") == {} and _subscriptions(cli, "SD-2") == {}
    # a genuine token of someone who may not see the ticket (any more) is refused as well
    with app.db.session() as s:
        s.execute(sa.update(Ticket).where(Ticket.key == "SD-1").values(shared=False))
    assert _request(_link(app, "bernd@acme.example"), {"notify": "on"})[0] == 403
    assert _subscriptions(cli, "SD-1") == {}


def test_the_page_escapes_customer_text(served, cli):
    app, _ = served
    with app.db.session() as s:
        s.execute(sa.update(Ticket).where(Ticket.key == "SD-1").values(summary="<script>alert(1)</script>"))
    status, page = _request(_link(app, "alice@acme.example"))
    assert status == 200 and "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert re.search(r"<title>Notifications for SD-1 - Service Desk</title>", page)


def _get(url: str, language: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept-Language": language} if language else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_the_token_is_opaque_and_a_broken_link_is_a_page_in_the_contacts_language(served, cli):
    """Issue 14 (8): the link showed the address in base64; a broken link answered in English
    text/plain to a German contact; no page named the service desk."""
    app, _ = served
    bernds = _link(app, "bernd@acme.example")
    token = bernds.rsplit("/", 1)[1]
    payload = base64.urlsafe_b64decode(token.split(".")[0] + "==").decode(errors="replace")
    assert "bernd" not in payload and "acme" not in payload and "SD-1" not in payload
    status, kind, page = _get(bernds)
    assert status == 200 and "Service Desk" in page  # the page names the desk
    # forged, with bernd's contact id in it: the page is German, named after the desk
    status, kind, page = _get(bernds[:-1] + ("0" if bernds[-1] != "0" else "1"))
    assert status == 404  # the signature is wrong, so nothing of bernd is known: browser's language
    status, kind, page = _get(bernds.rsplit("/", 1)[0] + "/garbage", language="de-DE,de;q=0.9,en;q=0.5")
    assert status == 404 and kind.startswith("text/html") and 'lang="de"' in page
    assert "Service Desk" in page and "ungültig" in page
    status, kind, page = _get(bernds.rsplit("/", 1)[0] + "/garbage")
    assert status == 404 and 'lang="en"' in page and "not valid" in page
    # a genuine link of a contact who may no longer see the ticket: in the contact's language
    with app.db.session() as s:
        s.execute(sa.update(Ticket).where(Ticket.key == "SD-1").values(shared=False))
    status, kind, page = _get(bernds, language="en")
    assert status == 403 and 'lang="de"' in page and "nicht mehr sichtbar" in page
