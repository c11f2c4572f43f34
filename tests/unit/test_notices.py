"""The notice to an unknown sender cannot be turned into backscatter (SPEC §4.4, issue 13): it
goes only to a From address the envelope sender vouches for, never when the trusted MTA saw
the sender fail (or, with require_authenticated_sender, did not see it pass), at most
`policy.max_notices_per_hour` in all, and with no text of the sender's in it."""

from __future__ import annotations

import email
import email.policy

import pytest
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.ingest import pipe
from mailgate.models import Inbound, Outbound
from tests.support import SUPPORT, make_message

TRUSTED = "mx.example.com"


@pytest.fixture
def make_app(make_config):
    apps = []

    def make(**policy) -> App:
        path = make_config(f"notices-{len(apps)}.toml", policy=policy, processing={"processes": 0})
        app = App(config_module.load(path)).prepare()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def _deliver(app: App, from_header: str, envelope_sender: str, n: int = 0, **headers) -> str:
    raw = make_message(sender=from_header, subject=headers.pop("subject", f"Hello {n}"), extra_headers=headers)
    delivery = pipe.deliver(app, raw, envelope_sender, SUPPORT)
    assert delivery.exit_code == 0, delivery.error
    return delivery.result.outcome


def _notices(app: App) -> list[Outbound]:
    with app.db.session() as s:
        return list(s.exec(select(Outbound).where(Outbound.event == "unknown_sender_notice")))


def test_forty_forged_from_addresses_get_no_notice(make_app):
    app = make_app()
    for n in range(40):
        assert _deliver(app, f"Victim {n} <victim{n}@stranger{n}.example>", "attacker@evil.example", n) \
            == "rejected_unknown_sender"
    assert _notices(app) == []
    with app.db.session() as s:
        errors = {r.error for r in s.exec(select(Inbound))}
    assert errors == {"no notice: the envelope sender does not vouch for the From address"}


def test_forty_forged_senders_get_no_notice_with_require_authenticated_sender(make_app):
    """The attacker forges the envelope sender too; the trusted MTA's results show no pass."""
    app = make_app(require_authenticated_sender=True, trusted_authserv_id=TRUSTED)
    for n in range(40):
        address = f"victim{n}@stranger{n}.example"
        assert _deliver(app, address, address, n) == "rejected_unknown_sender"
    assert _notices(app) == []


@pytest.mark.parametrize("results", [
    f"{TRUSTED}; spf=fail smtp.mailfrom=stranger.example",
    f"{TRUSTED}; dmarc=fail (p=none) header.from=stranger.example",
])
def test_no_notice_when_the_trusted_mta_saw_the_sender_fail(make_app, results):
    app = make_app(trusted_authserv_id=TRUSTED)
    address = "someone@stranger.example"
    assert _deliver(app, address, address, **{"Authentication-Results": results}) == "rejected_unknown_sender"
    assert _notices(app) == []


def test_notices_are_capped_per_hour_in_all(make_app):
    app = make_app(max_notices_per_hour=5)
    for n in range(12):
        address = f"person{n}@stranger{n}.example"
        _deliver(app, address, address, n)
    assert len(_notices(app)) == 5


def test_the_hourly_cap_holds_across_instances_writing_at_once(make_app):
    """Two instances on one database, each taking strangers' mail at the same time: the cap is
    one count for both (taken under a lock), not one each."""
    import concurrent.futures
    import threading

    apps = [make_app(max_notices_per_hour=5), make_app(max_notices_per_hour=5)]
    together = threading.Barrier(2)

    def take(i: int) -> list[str]:
        together.wait(timeout=30)  # both instances at work at the same time
        return [_deliver(apps[i], f"person{i}-{n}@stranger{i}-{n}.example", f"person{i}-{n}@stranger{i}-{n}.example",
                         100 * i + n) for n in range(8)]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = [o for taken in pool.map(take, range(2)) for o in taken]
    assert outcomes == ["rejected_unknown_sender"] * 16
    assert len(_notices(apps[0])) == 5


def test_an_envelope_sender_of_the_same_organisation_vouches(make_app):
    app = make_app()
    _deliver(app, "Chief <chief@stranger.example>", "bounces+123@mail.stranger.example")
    _deliver(app, "Other <other@elsewhere.co.uk>", "bounces@co.uk")  # a public suffix vouches for nobody
    assert [n.recipient for n in _notices(app)] == ["chief@stranger.example"]


def test_the_notice_carries_no_text_of_the_sender(make_app):
    app = make_app()
    address = "visit.evil.example.now@stranger.example"
    _deliver(app, f'"Cheap pills at evil.example" <{address}>', address, subject="Click http://evil.example/x")
    notice, = _notices(app)
    assert notice.recipient == address.lower()
    message = email.message_from_bytes(notice.message, policy=email.policy.default)
    texts = [part.get_content().lower() for part in message.walk() if part.get_content_maintype() == "text"]
    assert len(texts) == 2  # the plain text and the HTML
    for text in texts:
        for word in ("evil", "pills", "visit", "click", "stranger.example"):
            assert word not in text, word
    assert "evil" not in notice.subject.lower()
