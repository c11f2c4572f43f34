"""The relay sink of tests/relay.py, with SMTP AUTH by OAuth2 token: XOAUTH2 and OAUTHBEARER
(aiosmtpd's auth_MECHANISM hooks), each token checked by introspection (RFC 7662) at the
test's authorisation server, over HTTP like Dovecot does. A refused token gets the JSON error
challenge and then 535, as Gmail and Exchange Online answer."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult

from tests.relay import RelaySink, _Handler

MECHANISMS = ("XOAUTH2", "OAUTHBEARER")


class _OAuthHandler(_Handler):
    async def auth_XOAUTH2(self, server, args):
        return await self.sink.check(server, "XOAUTH2", args)

    async def auth_OAUTHBEARER(self, server, args):
        return await self.sink.check(server, "OAUTHBEARER", args)


@dataclass
class OAuthRelaySink(RelaySink):
    introspection_url: str = ""
    mechanisms: tuple[str, ...] = MECHANISMS  # those it offers
    logins: list[tuple[str, str, bool]] = field(default_factory=list)  # (mechanism, user, accepted)

    def start(self) -> "OAuthRelaySink":
        refused = ["PLAIN", "LOGIN", *(m for m in MECHANISMS if m not in self.mechanisms)]
        self._controller = Controller(_OAuthHandler(self), hostname="127.0.0.1", port=self.port, decode_data=False,
                                      auth_required=True, auth_require_tls=False, auth_exclude_mechanism=refused)
        self._controller.start()
        return self

    async def check(self, server, mechanism: str, args: list[str]) -> AuthResult:
        blob = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth("")
        if blob is MISSING:
            return AuthResult(success=False, handled=True)
        user, token = _parse(mechanism, blob.decode())
        ok = await asyncio.to_thread(self._active, user, token)
        with self.lock:
            self.logins.append((mechanism, user, ok))
        if ok:
            return AuthResult(success=True)
        await server.challenge_auth(json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"}))
        return AuthResult(success=False, handled=False, message="535 5.7.8 Username and Password not accepted")

    def _active(self, user: str, token: str) -> bool:
        form = urllib.parse.urlencode({"token": token}).encode()
        with urllib.request.urlopen(self.introspection_url, data=form, timeout=10) as response:
            answer = json.load(response)
        return answer.get("active") is True and answer.get("username") == user


def _parse(mechanism: str, text: str) -> tuple[str, str]:
    """(user, token) of an XOAUTH2 or OAUTHBEARER client message."""
    fields = dict(part.split("=", 1) for part in text.split("\x01") if "=" in part and not part.startswith("n,"))
    if mechanism == "OAUTHBEARER":
        gs2 = text.split("\x01", 1)[0]  # n,a=user,
        user = gs2.split(",")[1].removeprefix("a=").replace("=2C", ",").replace("=3D", "=")
    else:
        user = fields.get("user", "")
    return user, fields.get("auth", "").removeprefix("Bearer ")
