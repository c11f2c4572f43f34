"""One SMTP session to the configured relay (aiosmtplib), reused for the messages of a pass.

Replies are sorted the way SPEC §7 retries them: 5xx → PermanentFailure (the message is
failed, the reply kept); 4xx → TemporaryFailure; 421, a refused or lost connection, a
timeout, a failed greeting, STARTTLS or login → Outage (nothing can be sent now). With
`relay_auth = "oauth2"` the login is SASL with an access token (mailgate.oauth): a token the
relay refuses is refreshed and tried once more at once.
"""

from __future__ import annotations

import asyncio

import aiosmtplib

from mailgate.config import OutboundConfig
from mailgate.oauth import sasl
from mailgate.oauth.endpoint import TokenError
from mailgate.outbound.errors import Outage, PermanentFailure, TemporaryFailure

_NETWORK_ERRORS = (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError)


class Relay:
    def __init__(self, cfg: OutboundConfig, tokens=None):
        self.cfg = cfg
        self.tokens = tokens  # the relay's OAuth2 Keeper, with relay_auth = "oauth2"
        self.name = f"relay {cfg.relay_host}:{cfg.relay_port}"
        self._client: aiosmtplib.SMTP | None = None
        self._local_hostname: str | None = None  # our name in EHLO; looked up (DNS) once

    async def send(self, outbound_id: int, envelope_sender: str, recipient: str, message: bytes) -> None:
        reused = self._client is not None and self._client.is_connected
        try:
            await self._transaction(envelope_sender, recipient, message)
        except aiosmtplib.SMTPServerDisconnected:
            if not reused:
                raise Outage(None, "connection lost") from None
            await self._drop()  # an idle connection the relay closed: once more on a new one
            await self._transaction(envelope_sender, recipient, message)

    async def _transaction(self, envelope_sender: str, recipient: str, message: bytes) -> None:
        client = await self._connected()
        try:
            await client.mail(envelope_sender)
            await client.rcpt(recipient)
            await client.data(message)
        except aiosmtplib.SMTPResponseException as e:
            await self._reset()
            raise _classified(e) from None
        except aiosmtplib.SMTPServerDisconnected:
            await self._drop()
            raise
        except _NETWORK_ERRORS as e:
            await self._drop()
            raise Outage(None, _text(e)) from None

    async def close(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.quit()
            except _NETWORK_ERRORS:
                pass
        await self._drop()

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        cfg = self.cfg
        client = aiosmtplib.SMTP(
            hostname=cfg.relay_host, port=cfg.relay_port, timeout=cfg.timeout_seconds,
            use_tls=cfg.relay_tls == "tls", start_tls=cfg.relay_tls == "starttls",
            username=None if self.tokens else cfg.relay_username or None,
            password=None if self.tokens else cfg.relay_password or None,
            local_hostname=self._local_hostname,
        )
        try:
            await client.connect()
            if self.tokens is not None:
                await self._oauth_login(client)
        except _NETWORK_ERRORS as e:  # greeting, STARTTLS and login included: not the message's fault
            client.close()
            raise Outage(getattr(e, "code", None), _text(e)) from None
        except TokenError as e:
            client.close()
            raise Outage(None, str(e)) from None
        self._client, self._local_hostname = client, client.local_hostname
        return client

    async def _oauth_login(self, client: aiosmtplib.SMTP) -> None:
        token = await self.tokens.token()
        try:
            await sasl.smtp_login(client, self.cfg.relay_username, token)
        except aiosmtplib.SMTPAuthenticationError:  # expired early or revoked: a new one, at once
            await sasl.smtp_login(client, self.cfg.relay_username, await self.tokens.renew(token))

    async def _reset(self) -> None:
        try:
            await self._client.rset()
        except _NETWORK_ERRORS:
            await self._drop()

    async def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None


def _classified(e: aiosmtplib.SMTPResponseException) -> Exception:
    if e.code == 421:  # the relay is going away: an outage, not this message's fault
        return Outage(e.code, e.message)
    if 500 <= e.code < 600:
        return PermanentFailure(e.code, e.message)
    return TemporaryFailure(e.code, e.message)


def _text(e: BaseException) -> str:
    return str(getattr(e, "message", "") or e or type(e).__name__)
