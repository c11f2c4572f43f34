"""check-config for the OAuth2 keys of SPEC §10: each mistake named by its key, no secret shown."""

from __future__ import annotations

import pytest

from mailgate import config
from mailgate.oauth import providers
from tests.support import cli_in_process, write_config

SECRET = "client-secret-that-must-never-be-printed"
BOX = {"name": "support", "host": "outlook.office365.com", "port": 993, "tls": True,
       "username": "support@contoso.example", "auth": "oauth2", "oauth_provider": "microsoft",
       "oauth_tenant": "contoso.onmicrosoft.com", "oauth_client_id": "11111111-2222", "oauth_client_secret": SECRET}
RELAY = {"relay_host": "smtp.office365.com", "relay_port": 587, "relay_tls": "starttls",
         "relay_username": "support@contoso.example", "relay_auth": "oauth2", "relay_oauth_provider": "google",
         "relay_oauth_client_id": "abc.apps.googleusercontent.com", "relay_oauth_client_secret": SECRET}


@pytest.fixture
def check(tmp_path):
    """check(**sections) → (exit code, stdout, stderr) of check-config (no database needed)."""

    def run(**sections):
        path = write_config(tmp_path / "mailgate.toml", tmp_path / "state", f"sqlite:///{tmp_path}/db", sections)
        return cli_in_process(["--config", str(path), "check-config"])

    return run


@pytest.mark.parametrize("overrides, key", [
    ({"auth": "oauth"}, "imap[0].auth"),
    ({"oauth_provider": "yahoo"}, "imap[0].oauth_provider"),
    ({"oauth_provider": ""}, "imap[0].oauth_provider"),
    ({"oauth_client_id": ""}, "imap[0].oauth_client_id"),
    ({"oauth_tenant": " "}, "imap[0].oauth_tenant"),
    ({"oauth_provider": "custom"}, "imap[0].oauth_token_url"),
    ({"oauth_provider": "custom", "oauth_token_url": "https://idp.example/token"}, "imap[0].oauth_device_url"),
    ({"oauth_device_url": "https://idp.example/device"}, "imap[0].oauth_device_url"),
    ({"name": "relay"}, "imap[0].name"),
])
def test_check_config_names_the_oauth_key_of_a_mailbox(check, overrides, key):
    code, out, err = check(imap=[{**BOX, **overrides}])
    assert code == 78 and key in err, (code, err)
    assert SECRET not in out + err


@pytest.mark.parametrize("overrides, key", [
    ({"relay_auth": "xoauth2"}, "outbound.relay_auth"),
    ({"relay_oauth_provider": "aol"}, "outbound.relay_oauth_provider"),
    ({"relay_oauth_client_id": ""}, "outbound.relay_oauth_client_id"),
    ({"relay_username": ""}, "outbound.relay_username"),
])
def test_check_config_names_the_oauth_key_of_the_relay(check, overrides, key):
    code, out, err = check(outbound={**RELAY, **overrides})
    assert code == 78 and key in err, (code, err)


def test_check_config_names_a_bad_alert_address(check):
    code, _, err = check(operations={"alert_address": "ops"})
    assert code == 78 and "operations.alert_address" in err


def test_check_config_shows_the_oauth_accounts_without_their_secrets(check):
    code, out, err = check(imap=[BOX], outbound=RELAY, operations={"alert_address": "ops@contoso.example"})
    assert code == 0, err
    assert "imap support: outlook.office365.com:993/INBOX as support@contoso.example" in out
    assert "OAuth2 (microsoft)" in out and "relay smtp.office365.com:587" in out and "OAuth2 (google)" in out
    assert "operator alerts: ops@contoso.example" in out
    assert SECRET not in out + err


def test_the_providers_endpoints_and_default_scopes():
    cfg = config.from_dict({"imap": [BOX], "outbound": RELAY})
    box, relay = providers.accounts(cfg).values()
    assert box.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert box.device_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
    assert box.scope == "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    assert (relay.name, relay.token_url, relay.scope) == (
        "relay", "https://oauth2.googleapis.com/token", "https://mail.google.com/")
    assert relay.authorize_url == "https://accounts.google.com/o/oauth2/v2/auth"  # a browser sign-in
    smtp = config.from_dict({"outbound": {**RELAY, "relay_oauth_provider": "microsoft"}})
    assert providers.accounts(smtp)["relay"].scope == "https://outlook.office.com/SMTP.Send offline_access"
    assert providers.accounts(smtp)["relay"].device_url.startswith("https://login.microsoftonline.com/organizations/")
