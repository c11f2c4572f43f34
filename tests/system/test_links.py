"""The signed notification links over real HTTP (the daemon's HTTP side, served in the test
process): GET shows the state, POST switches, RFC 8058 one-click turns off; forged, borrowed
and misdirected tokens change nothing."""

from __future__ import annotations

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
from mailgate.models import Outbound, Ticket
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


def _tampered(link: str, key: str | None = None, email_address: str | None = None, sig: str | None = None) -> str:
    base, token = link.rsplit("/", 1)
    payload, signature = token.split(".")
    old_key, old_email = tokens._unb64(payload).split("\n")
    payload = tokens._b64(f"{key or old_key}\n{email_address or old_email}")
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
        _tampered(link, sig="0" * 20),
        link[:-1] + ("0" if link[-1] != "0" else "1"),
        link.rsplit("/", 1)[0] + "/" + tokens._b64("SD-1\nbernd@acme.example") + ".",
        link.rsplit("/", 1)[0] + "/garbage",
        link.rsplit("/", 1)[0] + "/" + tokens.make(app.signer.__class__(b"another-secret", "example.com"),
                                                   "SD-1", "bernd@acme.example"),
    ]
    for url in forged:
        assert _request(url)[0] == 404, url
        assert _request(url, {"notify": "on"})[0] == 404, url
        assert _request(url, {"List-Unsubscribe": "One-Click"})[0] == 404, url
    assert _subscriptions(cli) == {}


def test_another_contacts_token_cannot_switch_this_contact(served, cli):
    app, _ = served
    bernds = _link(app, "bernd@acme.example")
    as_carol = _tampered(bernds, email_address="carol@acme.example")  # bernd's signature, carol's address
    assert _request(as_carol, {"notify": "on"})[0] == 404
    assert _request(as_carol, {"List-Unsubscribe": "One-Click"})[0] == 404
    alices = _link(app, "alice@acme.example")
    assert _request(_tampered(alices, email_address="bernd@acme.example"), {"notify": "on"})[0] == 404
    assert _subscriptions(cli) == {}
    assert _request(bernds, {"notify": "on"})[0] == 200  # bernd's own link switches bernd only
    assert _subscriptions(cli) == {"bernd@acme.example": True}


def test_a_token_for_another_ticket_is_refused(served, cli):
    app, _ = served
    ginas = _link(app, "gina@globex.example", "SD-2")
    assert _request(_tampered(ginas, key="SD-1"), {"notify": "on"})[0] == 404
    assert _request(_tampered(_link(app, "alice@acme.example"), key="SD-2"), {"notify": "off"})[0] == 404
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
    assert re.search(r"<title>Notifications for SD-1</title>", page)
