"""`mailgate oauth login NAME` for Google: the authorisation code grant with PKCE (RFC 7636) and a
loopback redirect (RFC 8252 §7.3), because Google's device grant refuses the mail scope.

We print the provider's sign-in URL. Whoever signs in opens it in any browser; afterwards the
provider sends that browser to http://127.0.0.1:PORT/?code=…, where we listen. On a server the
browser runs elsewhere, so that page does not load there: the address in the browser's address
bar is pasted here instead (or the port is forwarded with `ssh -L PORT:127.0.0.1:PORT`). No
public web server is needed, and the code is useless without our PKCE verifier.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import sys
import threading
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlparse

from aiohttp import web

from mailgate.oauth import endpoint
from mailgate.oauth.device import LoginFailed, store_tokens
from mailgate.oauth.endpoint import ServerUnavailable, TokenRefused, Tokens
from mailgate.oauth.providers import Account
from mailgate.oauth.store import TokenRecord, TokenStore

WAIT_SECONDS = 600.0


async def login(account: Account, store: TokenStore, say: Callable[[str], None],
                pasted: Callable[[], str] | None = None) -> TokenRecord:
    """The whole grant: show SAY the URL, wait for the redirect (or a pasted address), store the tokens."""
    verifier, state = secrets.token_urlsafe(48), secrets.token_urlsafe(16)
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    runner, port = await _listen(answer)
    try:
        redirect_uri = f"http://127.0.0.1:{port}/"
        say(f"To let mailgate use {account.username} ({account.name}), open this address in a browser and sign in:")
        say(_authorize_url(account, redirect_uri, verifier, state))
        say(f"The browser is then sent to {redirect_uri}…; if that page does not load, copy the whole")
        say("address from the browser's address bar and paste it here:")
        address = await _first(answer, _pasted(pasted or sys.stdin.readline))
        tokens = await _exchange(account, _code(address, state), redirect_uri, verifier)
    finally:
        await runner.cleanup()
    return await store_tokens(store, tokens)


def _authorize_url(account: Account, redirect_uri: str, verifier: str, state: str) -> str:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = {"client_id": account.client_id, "redirect_uri": redirect_uri, "response_type": "code",
             "scope": account.scope, "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
             "access_type": "offline", "prompt": "consent",  # Google: a refresh token, every time
             "login_hint": account.username}
    return f"{account.authorize_url}?{urlencode(query)}"


async def _listen(answer: asyncio.Future) -> tuple[web.AppRunner, int]:
    """A one-page web server on a free loopback port that takes the redirect."""

    async def redirected(request: web.Request) -> web.Response:
        if not answer.done():
            answer.set_result(str(request.url))
        return web.Response(text="mailgate has the answer; you can close this page.\n")

    app = web.Application()
    app.router.add_get("/", redirected)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def _pasted(read: Callable[[], str]) -> asyncio.Future:
    """A line from READ (stdin), read in a daemon thread: one still waiting when the redirect
    came first must not keep the command from exiting."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def reading() -> None:
        text = read()
        loop.call_soon_threadsafe(lambda: line.done() or line.set_result(text))

    threading.Thread(target=reading, daemon=True).start()
    return line


async def _first(*waiting) -> str:
    """The first answer: the redirect reaching our port, or an address pasted on stdin."""
    tasks = [asyncio.ensure_future(w) for w in waiting]
    done, pending = await asyncio.wait(tasks, timeout=WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if not done:
        raise LoginFailed("no answer within 10 minutes")
    address = done.pop().result().strip()
    if not address:
        raise LoginFailed("nothing was pasted")
    return address


def _code(address: str, state: str) -> str:
    """The code in the redirect ADDRESS, once its state is ours."""
    query = parse_qs(urlparse(address).query)
    if "error" in query:
        raise LoginFailed(f"the sign-in was refused ({query['error'][0]})")
    if query.get("state", [""])[0] != state or "code" not in query:
        raise LoginFailed("that is not the address of this sign-in (no code, or another state)")
    return query["code"][0]


async def _exchange(account: Account, code: str, redirect_uri: str, verifier: str) -> Tokens:
    form = account.form(grant_type="authorization_code", code=code, redirect_uri=redirect_uri,
                        code_verifier=verifier)
    try:
        return await endpoint.token(account.token_url, form)
    except (TokenRefused, ServerUnavailable) as e:
        raise LoginFailed(f"the token endpoint refused the code: {e}") from None
