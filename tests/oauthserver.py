"""A small, real OAuth2 authorisation server on loopback for the OAuth2 tests (http.server in
a thread). It speaks the parts of the protocols that mailgate and Dovecot use:

    GET  /authorize   the authorisation code grant's sign-in page (RFC 6749 §4.1, PKCE RFC 7636):
                      the user `signs_in_as` consents at once and is sent to the redirect URI
    POST /device      device authorisation (RFC 8628 §3.1)
    POST /token       the device_code grant (§3.4, with authorization_pending, slow_down,
                      access_denied, expired_token) and the refresh_token grant (RFC 6749 §6),
                      which rotates the refresh token: the old one is dead from then on
    POST /introspect  token introspection (RFC 7662), which Dovecot's oauth2 passdb asks
    POST /revoke      token revocation (RFC 7009)

and the test steers it directly: approve or deny a user code, expire every access token now,
revoke a user's grant, make the next token request die without an answer, stop it and start
it again on the same port with its state kept (a restart, as of a server with a database).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode

import pytest

from mailgate.oauth.endpoint import DEVICE_GRANT

CLIENT_ID = "mailgate-tests"


@dataclass
class Grant:
    """One user's consent: the refresh token now valid for it, and its access tokens."""

    username: str
    refresh_token: str
    revoked: bool = False


@dataclass
class Device:
    user_code: str
    expires_at: float
    username: str | None = None  # set when approved
    denied: bool = False
    slow_down: bool = False  # answer the next poll with slow_down


@dataclass
class AuthServer:
    port: int = field(default_factory=lambda: _free_port())
    lifetime: float = 3600.0  # expires_in of the access tokens it issues
    interval: float = 0.05  # the device grant's polling interval
    device_expires_in: float = 600.0  # how long a user code is good for
    denying: bool = False  # every user code is refused (as if the user said no at once)
    signs_in_as: str = ""  # who signs in at /authorize
    codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # code → (user, challenge, redirect)
    grants: dict[str, Grant] = field(default_factory=dict)  # refresh token → grant
    access: dict[str, tuple[Grant, float]] = field(default_factory=dict)  # access token → (grant, expiry)
    devices: dict[str, Device] = field(default_factory=dict)  # device code → request
    counts: Counter = field(default_factory=Counter)  # "refresh", "refused", "introspect", "device poll", …
    polls: list[float] = field(default_factory=list)  # monotonic times of device-code polls
    crash_next_token_request: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    _httpd: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # --- running ---------------------------------------------------------------------------

    def start(self) -> "AuthServer":
        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # --- what the test does ----------------------------------------------------------------

    def approve(self, user_code: str, username: str) -> None:
        """The user opened the verification URL, entered USER_CODE and signed in as USERNAME."""
        with self.lock:
            self._device(user_code).username = username

    def deny(self, user_code: str) -> None:
        with self.lock:
            self._device(user_code).denied = True

    def slow_down(self, user_code: str) -> None:
        with self.lock:
            self._device(user_code).slow_down = True

    def issue(self, username: str) -> tuple[str, str]:
        """A grant as if USERNAME had signed in already: (refresh token, access token)."""
        with self.lock:
            grant = Grant(username, _token("rt"))
            self.grants[grant.refresh_token] = grant
            return grant.refresh_token, self._access_token(grant)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far expires now (the refresh tokens stay good)."""
        with self.lock:
            self.access = {t: (g, 0.0) for t, (g, _) in self.access.items()}

    def revoke(self, username: str) -> None:
        """USERNAME's consent is withdrawn: refresh and access tokens are dead."""
        with self.lock:
            for grant in self.grants.values():
                if grant.username == username:
                    grant.revoked = True

    def refresh_token_of(self, username: str) -> str | None:
        """The refresh token now valid for USERNAME (the last one rotated in)."""
        with self.lock:
            live = [t for t, g in self.grants.items() if g.username == username and not g.revoked and g.refresh_token == t]
            return live[-1] if live else None

    def user_codes(self) -> list[str]:
        with self.lock:
            return [d.user_code for d in self.devices.values()]

    def _device(self, user_code: str) -> Device:
        return next(d for d in self.devices.values() if d.user_code == user_code)

    # --- the endpoints (called by the handler, under the lock) -----------------------------

    def device_authorization(self, form: dict) -> tuple[int, dict]:
        if form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client"}
        code, user_code = _token("dc"), secrets.token_hex(4).upper()
        self.devices[code] = Device(user_code, time.monotonic() + self.device_expires_in, denied=self.denying)
        return 200, {"device_code": code, "user_code": user_code, "verification_uri": self.url("/verify"),
                     "verification_uri_complete": self.url(f"/verify?code={user_code}"),
                     "expires_in": self.device_expires_in, "interval": self.interval}

    def authorize(self, query: dict) -> tuple[int, dict]:
        """The sign-in page: (302, {"Location": …}) back to the client's redirect URI."""
        if query.get("client_id") != CLIENT_ID or query.get("code_challenge_method") != "S256":
            return 400, {"error": "invalid_request"}
        code = _token("ac")
        self.codes[code] = (self.signs_in_as, query.get("code_challenge", ""), query.get("redirect_uri", ""))
        answer = urlencode({"code": code, "state": query.get("state", "")})
        return 302, {"Location": f"{query.get('redirect_uri')}?{answer}"}

    def token(self, form: dict) -> tuple[int, dict]:
        if form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") == "authorization_code":
            return self._code_grant(form)
        if form.get("grant_type") == DEVICE_GRANT:
            return self._device_grant(form.get("device_code", ""))
        if form.get("grant_type") == "refresh_token":
            return self._refresh_grant(form.get("refresh_token", ""))
        return 400, {"error": "unsupported_grant_type"}

    def _device_grant(self, code: str) -> tuple[int, dict]:
        self.counts["device poll"] += 1
        self.polls.append(time.monotonic())
        device = self.devices.get(code)
        if device is None:
            return 400, {"error": "invalid_grant"}
        if device.denied:
            return 400, {"error": "access_denied", "error_description": "the user said no"}
        if time.monotonic() > device.expires_at:
            return 400, {"error": "expired_token"}
        if device.slow_down:
            device.slow_down = False
            return 400, {"error": "slow_down"}
        if device.username is None:
            return 400, {"error": "authorization_pending"}
        del self.devices[code]  # a device code is good for one grant
        grant = Grant(device.username, _token("rt"))
        self.grants[grant.refresh_token] = grant
        return 200, self._tokens(grant)

    def _code_grant(self, form: dict) -> tuple[int, dict]:
        user, challenge, redirect_uri = self.codes.get(form.get("code", ""), ("", "", ""))
        verifier = form.get("code_verifier", "").encode()
        proof = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
        if not user or proof != challenge or form.get("redirect_uri") != redirect_uri:
            return 400, {"error": "invalid_grant"}
        del self.codes[form["code"]]  # good for one grant
        grant = Grant(user, _token("rt"))
        self.grants[grant.refresh_token] = grant
        return 200, self._tokens(grant)

    def _refresh_grant(self, refresh_token: str) -> tuple[int, dict]:
        grant = self.grants.get(refresh_token)
        if grant is None or grant.revoked or grant.refresh_token != refresh_token:
            self.counts["refused"] += 1  # unknown, revoked, or rotated away
            return 400, {"error": "invalid_grant", "error_description": "AADSTS70000: the refresh token is not valid"}
        self.counts["refresh"] += 1
        grant.refresh_token = _token("rt")  # rotation: the old one is dead from now on
        self.grants[grant.refresh_token] = grant
        return 200, self._tokens(grant)

    def _tokens(self, grant: Grant) -> dict:
        return {"token_type": "Bearer", "access_token": self._access_token(grant), "expires_in": self.lifetime,
                "refresh_token": grant.refresh_token, "scope": "mail"}

    def _access_token(self, grant: Grant) -> str:
        token = _token("at")
        self.access[token] = (grant, time.time() + self.lifetime)
        return token

    def introspect(self, form: dict) -> tuple[int, dict]:
        self.counts["introspect"] += 1
        grant, expires = self.access.get(form.get("token", ""), (None, 0.0))
        if grant is None or grant.revoked or time.time() >= expires:
            return 200, {"active": False}
        return 200, {"active": True, "username": grant.username, "exp": int(expires), "client_id": CLIENT_ID}

    def revocation(self, form: dict) -> tuple[int, dict]:
        grant = self.grants.get(form.get("token", ""))
        if grant is not None:
            grant.revoked = True
        return 200, {}


def _handler(server: AuthServer):
    routes = {"/device": server.device_authorization, "/token": server.token,
              "/introspect": server.introspect, "/revoke": server.revocation}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path, _, query = self.path.partition("?")
            if path != "/authorize":
                return self._answer(404, {"error": "not_found"})
            with server.lock:
                status, body = server.authorize({k: v[0] for k, v in parse_qs(query).items()})
            if status != 302:
                return self._answer(status, body)
            self.send_response(302)
            self.send_header("Location", body["Location"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            route = routes.get(self.path.split("?")[0])
            if route is None:
                return self._answer(404, {"error": "not_found"})
            with server.lock:
                if route == server.token and server.crash_next_token_request:
                    server.crash_next_token_request = False
                    server.counts["crashed"] += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # died before it answered (or rotated)
                    return
                status, body = route(form)
            self._answer(status, body)

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet: the tests look at counts, not at a log
            pass

    return Handler


@pytest.fixture
def auth():
    """A started AuthServer; stopped at the end."""
    server = AuthServer().start()
    yield server
    server.stop()


def _token(kind: str) -> str:
    return f"{kind}-{secrets.token_urlsafe(24)}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
