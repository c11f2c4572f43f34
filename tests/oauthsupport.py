"""Helpers of the OAuth2 tests: config keys and sign-ins for the test's authorisation server
(tests/oauthserver.py), and `mailgate oauth login` as a real process."""

from __future__ import annotations

import re
import subprocess
import sys

from mailgate import config as config_module
from mailgate.oauth.store import TokenRecord, TokenStore
from tests.oauthserver import CLIENT_ID

SENDER = "support@example.com"
OPERATOR = "ops@example.com"


def oauth_keys(auth, prefix: str = "") -> dict:
    """The oauth_* keys of a mailbox (PREFIX "") or the relay ("relay_") for the test server."""
    return {f"{prefix}auth": "oauth2", f"{prefix}oauth_provider": "custom", f"{prefix}oauth_client_id": CLIENT_ID,
            f"{prefix}oauth_token_url": auth.url("/token"), f"{prefix}oauth_device_url": auth.url("/device"),
            f"{prefix}oauth_scope": "mail"}


def signed_in(config_path, auth, name: str = "relay", user: str = SENDER, with_access: bool = False) -> str:
    """Store a grant of the test server for account NAME, as `oauth login` would; its refresh token."""
    refresh, access = auth.issue(user)
    record = TokenRecord(refresh_token=refresh)
    if with_access:
        record = record.with_tokens(access, auth.lifetime, None)
    TokenStore(config_module.load(config_path).state_dir, name).write(record)
    return refresh


def login_process(path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mailgate", "--config", str(path), "oauth", "login", name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(login: subprocess.Popen) -> tuple[str, str]:
    """The rest of what the CLI prints, once it exits. (communicate() would read past the lines
    readline() has buffered.)"""
    out, err = login.stdout.read(), login.stderr.read()
    login.wait(timeout=30)
    return out, err


def user_code(login: subprocess.Popen) -> str:
    while True:
        line = login.stdout.readline()
        assert line, "the CLI ended before it showed a code"
        if m := re.search(r"enter the code (\w+)", line):
            return m.group(1)
