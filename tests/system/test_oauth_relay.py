"""OAuth2 for the outbound relay (SPEC §10) against a real aiosmtpd relay that checks XOAUTH2 and
OAUTHBEARER tokens by introspection at a real authorisation server on loopback
(tests/oauthserver.py); and `mailgate oauth login` and `oauth status` through the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from sqlmodel import select

from mailgate import config as config_module
from mailgate.app import App
from mailgate.models import Outbound
from mailgate.oauth import device, providers
from mailgate.oauth.store import TokenStore
from tests import world
from tests.oauthrelay import OAuthRelaySink
from tests.oauthserver import CLIENT_ID, auth  # noqa: F401  (a fixture)
from tests.oauthsupport import OPERATOR, SENDER, finish, login_process, oauth_keys, signed_in, user_code
from tests.support import cli_json, wait_for

pytestmark = pytest.mark.one_database



@pytest.fixture
def oauth_sink(auth):
    sinks = []

    def start(mechanisms=("XOAUTH2", "OAUTHBEARER")) -> OAuthRelaySink:
        sinks.append(OAuthRelaySink(introspection_url=auth.url("/introspect"), mechanisms=mechanisms).start())
        return sinks[-1]

    yield start
    for s in sinks:
        s.stop()


def relay_config(make_config, auth, sink):
    return make_config(outbound=sink.config(relay_username=SENDER, retry_initial_seconds=0.1, retry_max_seconds=0.3,
                                            **oauth_keys(auth, "relay_")),
                       operations={"alert_address": OPERATOR})


def _app(config_path) -> App:
    app = App(config_module.load(config_path)).prepare()
    world.build(app)  # four notifications queued
    return app


def _rows(app: App, event: str | None = None) -> list[Outbound]:
    with app.db.session() as s:
        return [r for r in s.exec(select(Outbound).order_by(Outbound.id)) if event is None or r.event == event]


@pytest.mark.parametrize("mechanisms", [("XOAUTH2",), ("XOAUTH2", "OAUTHBEARER")])
def test_the_relay_logs_in_with_a_token_and_keeps_the_rotated_refresh_token(make_config, auth, oauth_sink, cli,
                                                                            mechanisms):
    sink = oauth_sink(mechanisms)
    path = relay_config(make_config, auth, sink)
    app = _app(path)
    first = signed_in(path, auth)
    code, out, err = cli("outbox", "flush", config=path)
    assert (code, out.strip()) == (0, "sent 4, deferred 0, failed 0"), err
    expected = "OAUTHBEARER" if "OAUTHBEARER" in mechanisms else "XOAUTH2"
    assert sink.logins == [(expected, SENDER, True)]  # one session for all four
    assert auth.counts["refresh"] == 1
    stored = TokenStore(app.config.state_dir, "relay").read()
    assert stored.refresh_token == auth.refresh_token_of(SENDER) != first  # rotated, and kept
    (status,) = cli_json(lambda *a: cli(*a, config=path), "oauth", "status")
    assert status["name"] == "relay" and status["has_token"] and status["last_error"] is None
    assert status["expires_at"] and status["last_refresh"]
    app.db.dispose()


def test_a_token_the_relay_refuses_is_refreshed_and_tried_again_at_once(make_config, auth, oauth_sink, cli):
    sink = oauth_sink()
    path = relay_config(make_config, auth, sink)
    app = _app(path)
    signed_in(path, auth, with_access=True)  # an access token the file says is good for an hour ...
    auth.expire_access_tokens()  # ... that the server no longer takes
    code, out, err = cli("outbox", "flush", config=path)
    assert (code, out.strip()) == (0, "sent 4, deferred 0, failed 0"), err
    assert sink.logins == [("OAUTHBEARER", SENDER, False), ("OAUTHBEARER", SENDER, True)]
    assert auth.counts["refresh"] == 1
    app.db.dispose()


def test_a_revoked_relay_token_stops_sending_mails_the_operator_once_and_a_new_login_resumes(
        make_config, auth, oauth_sink, cli, tmp_path):
    sink = oauth_sink()
    path = relay_config(make_config, auth, sink)
    app = _app(path)
    signed_in(path, auth)
    auth.revoke(SENDER)
    for _ in range(2):  # the second pass retries the token: still one operator mail
        code, out, err = cli("outbox", "flush", config=path)
        assert code == 0 and "stopped: OAuth2" in out and "invalid_grant" in out, (out, err)
    assert sink.received == [] and auth.counts["refused"] == 2
    (alert,) = _rows(app, "oauth_refresh_failed")
    assert alert.recipient == OPERATOR and alert.status == "queued"  # it waits for the relay, like the rest
    assert b"mailgate oauth login relay" in alert.message
    (status,) = cli_json(lambda *a: cli(*a, config=path), "oauth", "status")
    assert not status["has_token"] and "refresh refused: invalid_grant" in status["last_error"]

    login = login_process(path, "relay")
    auth.approve(user_code(login), SENDER)
    out, err = finish(login)
    assert login.returncode == 0, err
    code, out, err = cli("outbox", "flush", config=path)
    assert (code, out.strip()) == (0, "sent 5, deferred 0, failed 0"), err  # the operator's mail too
    assert {r.rcpt_tos[0] for r in sink.received} >= {OPERATOR}
    app.db.dispose()


def test_processes_sharing_the_state_directory_refresh_once_and_never_reuse_a_rotated_token(make_config, auth,
                                                                                          oauth_sink):
    """Four at once need a token (each its own App and Keeper, as four processes would have):
    the lock and the second read make one refresh; without them three would present a refresh
    token the server has rotated away (the test server refuses those)."""
    path = relay_config(make_config, auth, oauth_sink())
    signed_in(path, auth)  # a refresh token only: everybody needs a refresh
    start, tokens = threading.Barrier(4), []

    def one() -> None:
        app = App(config_module.load(path))
        start.wait()
        tokens.append(asyncio.run(app.oauth.relay.token()))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert (auth.counts["refresh"], auth.counts["refused"]) == (1, 0)
    assert len(tokens) == 4 and len(set(tokens)) == 1


def test_oauth_login_prints_the_code_and_stores_the_refresh_token_in_a_private_file(make_config, auth, oauth_sink):
    path = relay_config(make_config, auth, oauth_sink())
    login = login_process(path, "relay")
    lines = [login.stdout.readline() for _ in range(2)]
    shown = re.search(r"enter the code (\w+)", lines[1]).group(1)
    assert auth.url("/verify") in lines[0]
    wait_for(lambda: auth.counts["device poll"] >= 2, message="the CLI to poll (authorization_pending)")
    auth.approve(shown, SENDER)
    out, err = finish(login)
    assert login.returncode == 0, err
    store = TokenStore(config_module.load(path).state_dir, "relay")
    assert store.read().refresh_token == auth.refresh_token_of(SENDER)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.dir).st_mode) == 0o700
    printed = "".join(lines) + out + err
    assert "rt-" not in printed and "at-" not in printed  # no token is ever shown
    assert "verify?code=" + shown in printed, printed  # verification_uri_complete


@pytest.mark.parametrize("server, said", [({"denying": True}, "the sign-in was refused (access_denied"),
                                          ({"device_expires_in": 0.3}, "the code expired")])
def test_oauth_login_exits_1_when_refused_or_expired(make_config, auth, oauth_sink, cli, server, said):
    path = relay_config(make_config, auth, oauth_sink())
    for key, value in server.items():
        setattr(auth, key, value)
    code, out, err = cli("oauth", "login", "relay", config=path)
    assert code == 1 and said in err, (out, err)
    assert not TokenStore(config_module.load(path).state_dir, "relay").path.exists()


@pytest.mark.parametrize("answer", ["redirect", "paste"])
def test_oauth_login_with_a_browser_takes_the_redirect_or_a_pasted_address(make_config, auth, oauth_sink, answer):
    """Google's way (its device grant refuses the mail scope): authorisation code with PKCE."""
    sink = oauth_sink()
    path = make_config(outbound=sink.config(relay_username=SENDER, relay_oauth_authorize_url=auth.url("/authorize"),
                                            **oauth_keys(auth, "relay_")))
    auth.signs_in_as = SENDER
    login = subprocess.Popen([sys.executable, "-m", "mailgate", "--config", str(path), "oauth", "login", "relay"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = next(line.strip() for line in login.stdout if line.startswith(auth.url("/authorize")))
    location = _sign_in(url)  # the browser, sent back to mailgate's loopback address
    if answer == "redirect":
        with urllib.request.urlopen(location, timeout=10) as page:
            assert b"mailgate has the answer" in page.read()
    else:  # the page did not load where the browser runs: its address is pasted
        assert _exchange_without_verifier(auth, location) == 400  # whoever sees it cannot use it
        login.stdin.write(location + "\n")
        login.stdin.flush()
    out, err = finish(login)
    assert login.returncode == 0, err
    store = TokenStore(config_module.load(path).state_dir, "relay")
    assert store.read().refresh_token == auth.refresh_token_of(SENDER)
    assert "rt-" not in out + err and "ac-" not in out + err


def _exchange_without_verifier(auth, location: str) -> int:
    query = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)
    form = {"grant_type": "authorization_code", "client_id": CLIENT_ID, "code": query["code"][0],
            "redirect_uri": location.split("?")[0], "code_verifier": "guessed"}
    try:
        urllib.request.urlopen(auth.url("/token"), data=urllib.parse.urlencode(form).encode(), timeout=10)
    except urllib.error.HTTPError as e:
        return e.code
    return 200


def _sign_in(url: str) -> str:
    """Open the sign-in URL as a browser would; where it sends the browser next."""
    class Stop(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    try:
        urllib.request.build_opener(Stop).open(url, timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 302
        return e.headers["Location"]
    raise AssertionError("no redirect")


def test_the_device_grant_slows_down_when_asked(make_config, auth, oauth_sink):
    config = config_module.load(relay_config(make_config, auth, oauth_sink()))
    account = providers.accounts(config)["relay"]

    async def grant():
        code = await device.start(account)
        auth.slow_down(code.user_code)
        auth.approve(code.user_code, SENDER)  # the first poll gets slow_down, the next one the tokens
        return await device.wait_for_grant(account, code, slow_down=0.5)

    tokens = asyncio.run(grant())
    assert tokens.refresh_token == auth.refresh_token_of(SENDER)
    first, second = auth.polls
    assert second - first >= auth.interval + 0.5


def test_oauth_login_of_an_unknown_account_is_a_one_line_error(cli):
    code, out, err = cli("oauth", "login", "nosuch")
    assert code == 1 and "no OAuth2 account 'nosuch'" in err


