"""Where an OAuth2 account gets its tokens: the endpoints and scopes of each provider (SPEC §10).

An `Account` is one mailbox, or the relay, with everything a token request needs, resolved from
its oauth_* keys: `microsoft` (Entra ID, per tenant), `google`, or `custom` (any server with a
token endpoint, RFC 6749, and a device authorisation endpoint, RFC 8628).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.config import Config, ImapConfig, OAuthSettings

RELAY = "relay"  # the account name of the outbound relay

MICROSOFT_LOGIN = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
MICROSOFT_SCOPES = {
    "imap": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
    "smtp": "https://outlook.office.com/SMTP.Send offline_access",
}
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
# Google's device grant refuses the mail scope (invalid_scope): a browser sign-in instead.
GOOGLE_AUTHORIZE_URL = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_SCOPE = "https://mail.google.com/"  # IMAP and SMTP alike; Google returns refresh tokens unasked


@dataclass(frozen=True)
class Account:
    """One OAuth2 account: the mailbox (or relay) it logs in to and how it gets tokens."""

    name: str  # a mailbox's name, or "relay"
    username: str  # who logs in to IMAP or SMTP
    provider: str
    client_id: str
    client_secret: str
    scope: str
    token_url: str
    device_url: str
    authorize_url: str  # set: `oauth login` signs in with a browser (browser.py), else a device code
    used_for: str  # "imap" or "smtp"

    def form(self, **fields: str) -> dict[str, str]:
        """A token-endpoint request body: FIELDS plus who asks (the secret only when there is one)."""
        form = {"client_id": self.client_id, **fields}
        if self.client_secret:
            form["client_secret"] = self.client_secret
        return form


def account(name: str, username: str, settings: OAuthSettings, used_for: str) -> Account:
    token_url, device_url, authorize_url, scope = _endpoints(settings, used_for)
    return Account(name=name, username=username, provider=settings.provider, client_id=settings.client_id,
                   client_secret=settings.client_secret, scope=settings.scope or scope, token_url=token_url,
                   device_url=device_url, authorize_url=authorize_url, used_for=used_for)


def _endpoints(settings: OAuthSettings, used_for: str) -> tuple[str, str, str, str]:
    """(token URL, device authorisation URL, authorisation URL, default scope) of the provider."""
    if settings.provider == "microsoft":
        base = MICROSOFT_LOGIN.format(tenant=settings.tenant.strip())
        return f"{base}/token", f"{base}/devicecode", "", MICROSOFT_SCOPES[used_for]
    if settings.provider == "google":
        return GOOGLE_TOKEN_URL, "", GOOGLE_AUTHORIZE_URL, GOOGLE_SCOPE
    return settings.token_url, settings.device_url, settings.authorize_url, ""


def mailbox_account(box: ImapConfig) -> Account:
    return account(box.label, box.username, box.oauth, "imap")


def accounts(config: Config) -> dict[str, Account]:
    """Every OAuth2 account of CONFIG by name: the mailboxes with auth = oauth2, then the relay."""
    found = {box.label: mailbox_account(box) for box in config.imap if box.auth == "oauth2"}
    out = config.outbound
    if out.relay_host and out.relay_auth == "oauth2":
        found[RELAY] = account(RELAY, out.relay_username, out.relay_oauth, "smtp")
    return found
