"""Logging in with an access token: SASL OAUTHBEARER (RFC 7628) or XOAUTH2, over IMAP and SMTP.

OAUTHBEARER is the standard; XOAUTH2 is what Microsoft 365 speaks (Google speaks both). We use
OAUTHBEARER when the server announces it and XOAUTH2 otherwise. When a server refuses a token
it sends a JSON error as a challenge and waits for one more client response before its final
NO or 535: "\\x01" for OAUTHBEARER (RFC 7628 §3.2.3), an empty line for XOAUTH2.
"""

from __future__ import annotations

import base64
import imaplib

import aiosmtplib
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

OAUTHBEARER, XOAUTH2 = "OAUTHBEARER", "XOAUTH2"


def initial_response(mechanism: str, username: str, token: str) -> bytes:
    """The client's first message of MECHANISM, unencoded."""
    if mechanism == OAUTHBEARER:
        authzid = username.replace("=", "=3D").replace(",", "=2C")  # RFC 5801 saslname
        return f"n,a={authzid},\x01auth=Bearer {token}\x01\x01".encode()
    return f"user={username}\x01auth=Bearer {token}\x01\x01".encode()


def error_response(mechanism: str) -> bytes:
    """What the client answers the server's error challenge with."""
    return b"\x01" if mechanism == OAUTHBEARER else b""


# --- IMAP (blocking; runs in the mailbox's thread) ----------------------------------------


def imap_mechanism(client: IMAPClient) -> str:
    return OAUTHBEARER if client.has_capability(f"AUTH={OAUTHBEARER}") else XOAUTH2


def imap_login(client: IMAPClient, username: str, token: str) -> None:
    """AUTHENTICATE with TOKEN; LoginError when the server refuses it."""
    mechanism = imap_mechanism(client)
    answers = iter([initial_response(mechanism, username, token)])
    try:
        # imaplib calls the responder with each challenge: the first gets our message, any
        # later one is the server's error, answered so it sends its final NO.
        client._imap.authenticate(mechanism, lambda _challenge: next(answers, error_response(mechanism)))
    except imaplib.IMAP4.abort:
        raise  # the connection is gone: an outage, not a refusal
    except imaplib.IMAP4.error as e:
        raise LoginError(f"{mechanism} refused: {e}") from None
    # Asking for AUTH=… cached the capabilities of before the login; MOVE, UIDPLUS and IDLE
    # are announced after it.
    client._cached_capabilities = None


# --- SMTP ---------------------------------------------------------------------------------


def smtp_mechanism(client: aiosmtplib.SMTP) -> str:
    return OAUTHBEARER if OAUTHBEARER.lower() in client.server_auth_methods else XOAUTH2


async def smtp_login(client: aiosmtplib.SMTP, username: str, token: str) -> None:
    """AUTH with TOKEN; SMTPAuthenticationError when the relay refuses it."""
    if client.is_ehlo_or_helo_needed:  # the mechanisms are in the EHLO reply
        await client.ehlo()
    mechanism = smtp_mechanism(client)
    encoded = base64.b64encode(initial_response(mechanism, username, token))
    response = await client.execute_command(b"AUTH", mechanism.encode(), encoded)
    if response.code == 334:  # the error challenge
        response = await client.execute_command(base64.b64encode(error_response(mechanism)))
    if response.code != 235:
        raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)

