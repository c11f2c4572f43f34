"""OAuth2 mailboxes (SPEC §10): a real `mailgate serve` logging in to a real Dovecot whose oauth2
passdb checks each access token by introspection (RFC 7662) at a real authorisation server on
loopback (tests/oauthserver.py), which the tests steer: short-lived tokens, expiry and
revocation on demand, a crash in the middle of a token request, a restart."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.models import Outbound
from mailgate.oauth.refresher import NeedsLogin
from mailgate.oauth.store import TokenStore
from tests.dovecot import USERS, Dovecot, dovecot_binary
from tests.oauthserver import auth  # noqa: F401  (a fixture)
from tests.support import add_customer, cli_json, make_message, wait_for
from tests.system.test_imap import connected, healthz, log_lines, state, summaries
from tests.oauthsupport import OPERATOR, finish, login_process, oauth_keys, signed_in, user_code

pytestmark = [pytest.mark.slow, pytest.mark.one_database]


@pytest.fixture
def dovecot(auth):
    """A private Dovecot that takes OAuth2 tokens (and passwords) for the users of USERS."""
    if dovecot_binary() is None:
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd; scripts/test.sh does it)")
    server = Dovecot(USERS, introspection_url=auth.url("/introspect"))
    try:
        server.start()
        yield server
    finally:
        server.remove()


def oauth_mailbox(server, auth, user: str = "support", **overrides) -> dict:
    return {"name": user, "host": "127.0.0.1", "port": server.port, "username": user, "folder": "INBOX",
            "processed_folder": "Processed", **oauth_keys(auth), **overrides}


def start(daemon, make_config, dovecot, auth, users=("support",), **sections):
    """A daemon fetching from USERS' mailboxes, each signed in already."""
    path = make_config("oauth.toml", imap=[oauth_mailbox(dovecot, auth, u) for u in users],
                       operations={"alert_address": OPERATOR}, **sections)
    for user in users:
        signed_in(path, auth, name=user, user=user, with_access=True)
    return path, daemon(path)


def logins(dovecot, user: str = "support", method: str = "OAUTHBEARER") -> int:
    return sum(f"Login: user=<{user}>, method={method}" in line for line in dovecot.log().splitlines())


def stored(path, name: str = "support"):
    return TokenStore(config_module.load(path).state_dir, name).read()


def test_idle_lasts_across_token_expiries_and_a_refused_token_is_refreshed_at_once(daemon, make_config, dovecot,
                                                                                  auth, cli):
    add_customer(cli)
    auth.lifetime = 2.0  # refreshed every 1.5 s, a quarter of the lifetime ahead
    path, d = start(daemon, make_config, dovecot, auth)
    wait_for(lambda: connected(d) and state(d)["activity"] == "waiting", message="the mailbox to idle")
    wait_for(lambda: auth.counts["refresh"] >= 3, timeout=15, message="refreshes on the schedule")
    assert logins(dovecot) == 1  # refreshed while idling, not by logging in again
    wait_for(lambda: stored(path).refresh_token == auth.refresh_token_of("support"),
             message="the rotated refresh token kept")  # (the latest may be on its way)

    auth.expire_access_tokens()  # the session's token is dead: the IDLE goes on
    dovecot.append(make_message(subject="While idling"))
    wait_for(lambda: summaries(cli) == ["While idling"], message="the ticket")
    assert logins(dovecot) == 1 and state(d)["oauth"] == "ok"

    auth.lifetime = 3600.0
    wait_for(lambda: stored(path).lifetime() > 100, message="a long-lived token")
    refreshes = auth.counts["refresh"]
    auth.expire_access_tokens()  # early, while the file still gives it an hour
    kicked = time.monotonic()
    dovecot.kick("support")  # as Exchange Online ends a session whose token has run out
    wait_for(lambda: logins(dovecot) == 2, timeout=20, message="a login with a new token")
    reconnect = time.monotonic() - kicked
    print(f"\nsession dropped, token refused: logged in again {reconnect:.1f}s later")
    assert reconnect < 20  # not the five minutes after a wrong password (Dovecot's penalty: ~4 s)
    assert auth.counts["refresh"] == refreshes + 1 and not log_lines(d, "login failed")
    dovecot.append(make_message(subject="After the new token"))
    wait_for(lambda: len(summaries(cli)) == 2, message="the next ticket")

    d.kill()  # no refresh is due, so none is in flight: the one valid refresh token is on disk
    assert stored(path).refresh_token == auth.refresh_token_of("support")
    assert auth.counts["refused"] == 0


def test_a_revoked_token_is_shown_everywhere_mailed_once_and_a_new_login_resumes(daemon, make_config, dovecot,
                                                                                auth, cli):
    add_customer(cli)
    path, d = start(daemon, make_config, dovecot, auth, users=("support", "sales"))
    wait_for(lambda: connected(d, "support") and connected(d, "sales"), message="both mailboxes")
    auth.revoke("support")
    revoked = time.monotonic()
    dovecot.kick("support")
    wait_for(lambda: state(d, "support")["oauth"] == "refresh failed", message="/healthz to tell")
    noticed = time.monotonic() - revoked
    print(f"\nrevoked: /healthz said so {noticed:.1f}s later")
    wait_for(lambda: state(d, "support")["status"] == "login failed", message="the mailbox to wait for a login")
    report = healthz(d)  # 503 naming the mailbox; the other goes on
    assert report["status"] == "failing" and report["imap"]["sales"]["oauth"] == "ok"
    assert list(report["problems"]) == ["imap.support"]
    assert report["problems"]["imap.support"] == "oauth: refresh failed: run `mailgate oauth login support`"
    assert "run `mailgate oauth login support`" in report["imap"]["support"]["last_error"]
    assert "invalid_grant" in report["oauth"]["support"]["last_error"]
    metrics = _metrics(d)
    assert 'mailgate_oauth_refresh_failures_total{account="support",kind="refused"} 1.0' in metrics
    assert 'mailgate_oauth_refresh_failures_total{account="sales",kind="refused"} 0.0' in metrics
    assert 'mailgate_oauth_token_expiry_seconds{account="sales"}' in metrics
    status = {r["name"]: r for r in cli_json(lambda *a: cli(*a, config=path), "oauth", "status")}
    assert not status["support"]["has_token"] and "invalid_grant" in status["support"]["last_error"]
    assert status["sales"]["has_token"] and status["sales"]["last_error"] is None
    wait_for(lambda: [r.status for r in _alerts(path)] == ["sent"], message="the operator's mail")
    everywhere = time.monotonic() - revoked
    print(f"revoked: /healthz, /metrics, oauth status and the operator's mail {everywhere:.1f}s later")
    assert everywhere < config_module.ImapConfig.poll_seconds  # the bound: within one poll interval
    assert len(log_lines(d, "refused the refresh token")) == 1
    dovecot.append(make_message(subject="For sales"), user="sales")
    wait_for(lambda: summaries(cli) == ["For sales"], message="the other mailbox's ticket")

    # Another process tries the dead token too (as a restarted daemon would): still one mail.
    other = App(config_module.load(path))
    with pytest.raises(NeedsLogin):
        asyncio.run(other.oauth.get("support").token())
    assert auth.counts["refused"] == 2

    login = login_process(path, "support")
    auth.approve(user_code(login), "support")
    _, err = finish(login)
    assert login.returncode == 0, err
    dovecot.append(make_message(subject="After the new login"), user="support")
    wait_for(lambda: "After the new login" in summaries(cli), timeout=10, message="the mailbox back at once")
    assert healthz(d)["status"] == "ok"
    assert len(_alerts(path)) == 1
    assert "OAuth2 support: the account works again" in d.output()
    assert d.stop() == 0
    assert "rt-" not in d.output() and "at-" not in d.output()  # tokens are never logged


def test_an_authorisation_server_that_dies_mid_request_and_restarts_is_an_outage_not_a_failure(
        daemon, make_config, dovecot, auth, cli):
    add_customer(cli)
    auth.lifetime = 2.0
    path, d = start(daemon, make_config, dovecot, auth)
    wait_for(lambda: connected(d) and auth.counts["refresh"] >= 1, message="the mailbox to connect")
    auth.crash_next_token_request = True  # it dies before it answers (and before it rotated)
    wait_for(lambda: auth.counts["crashed"] == 1, message="the crash")
    auth.stop()
    wait_for(lambda: state(d)["oauth"] == "unreachable", message="/healthz to tell")
    dovecot.append(make_message(subject="While it is down"))  # the IDLE session goes on
    wait_for(lambda: summaries(cli) == ["While it is down"], message="the ticket")
    refreshes = auth.counts["refresh"]
    auth.start()
    wait_for(lambda: state(d)["oauth"] == "ok" and auth.counts["refresh"] > refreshes, timeout=90,
             message="a refresh after the restart")
    assert stored(path).refresh_token == auth.refresh_token_of("support")
    assert auth.counts["refused"] == 0 and not _alerts(path)
    assert len(log_lines(d, "authorisation server unreachable")) == 1
    assert connected(d) and logins(dovecot) == 1
    assert d.stop() == 0


def _metrics(d) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.http_port}/metrics", timeout=10) as response:
        return response.read().decode()


def _alerts(path) -> list[Outbound]:
    app = App(config_module.load(path))
    try:
        with app.db.session() as s:
            return list(s.exec(select(Outbound).where(Outbound.event == "oauth_refresh_failed")))
    finally:
        app.db.dispose()
