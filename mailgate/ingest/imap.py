"""The IMAP poller (SPEC §3.2): support mail fetched from mailboxes into the spool.

One asyncio task per [[imap]] mailbox. imapclient is synchronous, so every mailbox owns one
worker thread in which all its IMAP commands (and its spool writes) run; the event loop only
orchestrates and never waits on the network. The order of work for a message is what makes it
safe: fetch it (BODY.PEEK[], so nothing is marked read), store it durably in the spool, wake
the processor, and only then move it to the processed folder (or flag it \\Deleted and
expunge it). A crash in between fetches the message again, and the pipeline's Message-ID
de-duplication (§4.1) makes that harmless.

A mailbox waits for mail with IDLE where the server offers it (re-issued every 25 minutes,
before servers drop it), else it polls. Messages are addressed by UID under the folder's
UIDVALIDITY, never by sequence number. A lost connection is retried for ever with
exponential backoff and jitter, logged once when it goes and once when it is back; a failed
login is logged as such and retried slowly. One broken mailbox never stops the others.
A mailbox with `auth = "oauth2"` logs in with an access token (mailgate.oauth); a token the
server refuses is refreshed and tried again at once, not after the wrong-password pause.
Logs name mailboxes, UIDs and counts — never subjects or bodies.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import functools
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable

import tenacity
from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from mailgate.app import App
from mailgate.config import ImapConfig
from mailgate.core.aio import OutageLog, wait_any, wait_seconds
from mailgate.models import utcnow
from mailgate.core.spool import Envelope, SpoolError
from mailgate.errors import first_line
from mailgate.oauth import sasl
from mailgate.oauth.refresher import NO_TOKEN, REFRESH_FAILED, NeedsLogin

log = logging.getLogger("mailgate.imap")

# imapclient logs the whole protocol at DEBUG — passwords and message bodies included.
logging.getLogger("imapclient").setLevel(logging.WARNING)

IDLE_RENEW_SECONDS = 25 * 60  # RFC 2177: servers may drop an IDLE after 30 minutes
IDLE_CHECK_SECONDS = 1.0  # how soon an IDLE notices that the daemon is stopping
LOGIN_RETRY_SECONDS = 300  # a wrong password does not fix itself; don't hammer the server
TIMEOUT = SocketTimeout(connect=15, read=60)
MOVE_BATCH = 25  # spooled messages moved per command
_BACKOFF = tenacity.wait_exponential_jitter(multiplier=1, max=30, jitter=1)

CONNECTED, DISCONNECTED, LOGIN_FAILED = "connected", "disconnected", "login failed"
FAILING_AFTER = 3  # failed sessions in a row after which /healthz calls a mailbox failing


class LoginFailed(Exception):
    """The server refused the credentials; retried slowly, not like an outage."""


class ConnectionLost(Exception):
    """The server went away while we were idling."""


@dataclass
class MailboxState:
    """What /healthz reports about one mailbox."""

    status: str = "starting"  # starting, connected, disconnected, login failed, stopped
    mode: str = ""  # idle or poll, once connected
    activity: str = ""  # fetching (the folder is being worked through) or waiting (for new mail)
    last_error: str | None = None
    last_fetch_at: str | None = None
    fetched: int = 0
    failures: int = 0  # failed sessions in a row; reset once a session has synced the folder
    too_large: list[int] | None = None  # UIDs over smtp.max_message_size, left in the folder


@dataclass
class Session:
    """One logged-in connection with the folder selected, and what the server can do."""

    client: IMAPClient
    idle: bool
    move: bool
    uidplus: bool


class Poller:
    """One mailbox: sessions one after another, for as long as the daemon runs."""

    def __init__(self, app: App, box: ImapConfig, on_spooled: Callable[[], None]):
        self.app = app
        self.box = box
        self.name = box.label
        self.on_spooled = on_spooled
        self.state = MailboxState()
        self.recipient = box.username if "@" in box.username else app.config.tickets.support_addresses[0]
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"imap-{self.name}")
        self._spooled: set[int] = set()  # UIDs already in the spool but not yet moved away
        self._uidvalidity: int | None = None
        self._connection = OutageLog(log)  # down: cannot connect or log in
        self._sync_trouble = OutageLog(log)  # connected, but messages cannot be taken
        self.tokens = app.oauth.get(self.name) if box.auth == "oauth2" else None  # its Keeper

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                pause = await self._session(stopping)
                # A new OAuth2 login (or a token working again) ends a login-failed pause at once.
                await wait_any(stopping, *([self.tokens.renewed] if self.tokens else []), timeout=pause)
        finally:
            self.state.status = "stopped"
            self._thread.shutdown(wait=False)

    async def _blocking(self, func, *args):
        """Run FUNC in this mailbox's own thread: imapclient blocks, and is not thread-safe."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(func, *args))

    # --- one connection ----------------------------------------------------------------

    async def _session(self, stopping: asyncio.Event) -> float:
        """Connect and serve until the daemon stops or the connection fails; returns the
        pause before the next try."""
        session = None
        try:
            session = await self._connect()
            self._up(session)
            await self._serve(session, stopping)
            return 0
        except (LoginFailed, NeedsLogin) as e:
            self._down(LOGIN_FAILED, e)
            return LOGIN_RETRY_SECONDS
        except Exception as e:  # whatever it was: this mailbox tries again, the others go on
            self._down(DISCONNECTED, e)
            return _backoff(self.state.failures)
        finally:
            if session is not None:  # LOGOUT only on a good connection; a dead one could hang it
                await self._blocking(_close, session.client, self.state.status == CONNECTED)

    async def _connect(self) -> Session:
        """A logged-in session; with OAuth2, a refused token is refreshed and tried once more."""
        if self.tokens is None:
            return await self._blocking(self._open, None)
        self.tokens.renewed.clear()
        token = await self.tokens.token()
        try:
            return await self._blocking(self._open, token)
        except LoginFailed:
            return await self._blocking(self._open, await self.tokens.renew(token))

    def _open(self, token: str | None) -> Session:
        box = self.box
        context = _tls_context(box) if box.tls or box.starttls else None
        client = IMAPClient(box.host, port=box.port, ssl=box.tls, ssl_context=context, timeout=TIMEOUT)
        try:
            if not box.tls and box.starttls and client.has_capability("STARTTLS"):
                client.starttls(context)
            _login(client, box, token)
            self._select(client)
            return Session(client, idle=box.idle and client.has_capability("IDLE"),
                           move=client.has_capability("MOVE"), uidplus=client.has_capability("UIDPLUS"))
        except BaseException:
            _close(client, polite=False)
            raise

    def _select(self, client: IMAPClient) -> None:
        processed = self.box.processed_folder
        if processed and not client.folder_exists(processed):
            client.create_folder(processed)
            log.info("IMAP %s: created folder %s", self.name, processed)
        uidvalidity = client.select_folder(self.box.folder).get(b"UIDVALIDITY")
        if uidvalidity != self._uidvalidity:
            # UIDs of another UIDVALIDITY name other messages: forget what we remembered.
            if self._uidvalidity is not None:
                log.warning("IMAP %s: UIDVALIDITY changed from %s to %s", self.name, self._uidvalidity, uidvalidity)
            self._spooled.clear()
            self._uidvalidity = uidvalidity

    async def _serve(self, session: Session, stopping: asyncio.Event) -> None:
        incomplete = 0
        while not stopping.is_set():
            if await self._sync(session, stopping):
                incomplete = self.state.failures = 0
                await self._wait_for_mail(session, stopping)
            else:  # messages that could not be spooled or moved stay on the server: retry soon
                incomplete += 1
                await _wait(stopping, _backoff(incomplete))

    async def _wait_for_mail(self, session: Session, stopping: asyncio.Event) -> None:
        self.state.activity = "waiting"
        if session.idle:
            await self._idle(session.client, stopping)
        else:
            await _wait(stopping, self.box.poll_seconds)

    async def _idle(self, client: IMAPClient, stopping: asyncio.Event) -> None:
        """IDLE until new mail arrives, the daemon stops, or it is time to renew the IDLE.
        Short idle_checks keep the thread answerable to `stopping`."""
        await self._blocking(client.idle)
        renew_at = time.monotonic() + IDLE_RENEW_SECONDS
        if await self._blocking(_buffered, client):
            renew_at = 0  # announced together with "+ idling": end the IDLE and search now
        empty_at_once = 0
        while not stopping.is_set() and time.monotonic() < renew_at:
            started = time.monotonic()
            responses = await self._blocking(client.idle_check, IDLE_CHECK_SECONDS)
            if any(r[0] == b"BYE" for r in responses):
                raise ConnectionLost("the server said BYE")
            if any(len(r) > 1 and r[1] == b"EXISTS" for r in responses):
                break
            # imapclient's idle_check swallows EOF and returns nothing at once; one such return
            # can be a TLS record without data, two in a row mean the server has gone.
            quick = not responses and time.monotonic() - started < IDLE_CHECK_SECONDS / 2
            empty_at_once = empty_at_once + 1 if quick else 0
            if empty_at_once >= 2:
                raise ConnectionLost("connection closed by the server")
        await self._blocking(client.idle_done)

    # --- the messages ------------------------------------------------------------------

    async def _sync(self, session: Session, stopping: asyncio.Event) -> bool:
        """Spool and move away every message waiting in the folder. False when some could not
        be spooled or moved now: they stay on the server and are tried again."""
        tried: set[int] = set()
        self.state.activity = "fetching"
        try:
            # Before the search loop, whose last (empty) search must be the last command before
            # IDLE: mail arriving after it is announced in replies we would not look at.
            await self._report_too_large(session)
            # Until a search finds nothing new: mail that arrived meanwhile was announced in the
            # replies to our own commands (imaplib keeps those to itself), not to the next IDLE.
            while uids := [uid for uid in await self._blocking(_waiting, session.client, self._max_size)
                           if uid not in tried]:
                if stopping.is_set():
                    break
                tried.update(uids)
                await self._take(session, uids, stopping)
        except SpoolError as e:
            return self._sync_failed(f"the spool cannot take mail: {e.strerror}")
        except IMAPClientAbortError:
            raise  # the connection is gone: a new session
        except IMAPClientError as e:  # the server refused a command (NO/BAD)
            return self._sync_failed(f"the server refused: {_describe(e)}")
        self._sync_done()
        return True

    @property
    def _max_size(self) -> int:
        return self.app.config.smtp.max_message_size  # one limit for every inbound path

    async def _report_too_large(self, session: Session) -> None:
        """Messages over the size limit are never fetched (the search leaves them out): they
        stay in the folder for the operator, each logged once and listed in /healthz."""
        uids = await self._blocking(_too_large, session.client, self._max_size)
        for uid, size in sorted(uids.items()):
            if uid not in (self.state.too_large or []):
                log.error("IMAP %s: uid %d is %d bytes, over smtp.max_message_size (%d); left in %s",
                          self.name, uid, size, self._max_size, self.box.folder)
        self.state.too_large = sorted(uids) or None

    async def _take(self, session: Session, uids: list[int], stopping: asyncio.Event) -> None:
        """Spool UIDS one by one, moving them away in batches as they are spooled."""
        ready = []  # spooled, to be moved away
        for uid in uids:
            if stopping.is_set():
                break
            if uid in self._spooled or await self._fetch_and_spool(session.client, uid):
                ready.append(uid)
            if len(ready) >= MOVE_BATCH:
                await self._move_away(session, ready)
                ready = []
        await self._move_away(session, ready)

    async def _fetch_and_spool(self, client: IMAPClient, uid: int) -> bool:
        """False when the message vanished before we fetched it (another client expunged it)."""
        spool_id = await self._blocking(self._fetch_and_spool_blocking, client, uid)
        if spool_id is None:
            return False
        self._spooled.add(uid)
        self.state.fetched += 1
        self.state.last_fetch_at = utcnow().isoformat()
        log.debug("IMAP %s: uid %d spooled as %s", self.name, uid, spool_id)
        self.on_spooled()
        return True

    def _fetch_and_spool_blocking(self, client: IMAPClient, uid: int) -> str | None:
        data = client.fetch([uid], ["BODY.PEEK[]"]).get(uid)
        raw = data.get(b"BODY[]") if data else None
        if raw is None:
            return None
        return self.app.spool.put(raw, Envelope(sender=_return_path(raw), recipients=[self.recipient], source="imap"))

    async def _move_away(self, session: Session, uids: list[int]) -> None:
        if not uids:
            return
        await self._blocking(_move_away, session, uids, self.box.processed_folder)
        self._spooled.difference_update(uids)
        log.info("IMAP %s: %d message(s) spooled and %s", self.name, len(uids),
                 f"moved to {self.box.processed_folder}" if self.box.processed_folder else "expunged")

    # --- state and the log: an outage is logged when it starts and when it ends ---------

    def _up(self, session: Session) -> None:
        was = self.state.status
        self.state.status, self.state.mode = CONNECTED, "idle" if session.idle else "poll"
        waiting = "waiting with IDLE" if session.idle else f"polling every {self.box.poll_seconds:g}s"
        if self._connection.recovered(f"IMAP {self.name}: connected again after {{seconds:.0f}}s; {waiting}") is None:
            log.info("IMAP %s: connected to %s:%d, folder %s (UIDVALIDITY %s); %s",
                     self.name, self.box.host, self.box.port, self.box.folder, self._uidvalidity, waiting)

    def _down(self, status: str, error: Exception) -> None:
        text = _describe(error)
        was = self.state.status
        self.state.status, self.state.last_error, self.state.activity = status, text, ""
        self.state.failures += 1
        box = self.box
        if status == LOGIN_FAILED:
            message = (f"IMAP {self.name}: login failed for user {box.username} at {box.host}:{box.port}: {text}; "
                       f"retrying every {LOGIN_RETRY_SECONDS}s")
        elif was == CONNECTED:
            message = f"IMAP {self.name}: connection lost: {text}; reconnecting in the background"
        else:
            message = f"IMAP {self.name}: cannot connect to {box.host}:{box.port}: {text}; retrying in the background"
        self._connection.failed(message, kind=status)  # an error once per outage, then debug

    def _sync_failed(self, problem: str) -> bool:
        self.state.last_error = problem
        self._sync_trouble.failed(f"IMAP {self.name}: {problem}; the messages stay on the server and are tried again",
                                  kind=problem)
        return False

    def _sync_done(self) -> None:
        self._sync_trouble.recovered(f"IMAP {self.name}: messages are taken again")


class Pollers:
    """The daemon's mailboxes: one Poller each, run as tasks; their states for /healthz."""

    def __init__(self, app: App, on_spooled: Callable[[], None]):
        self.pollers = [Poller(app, box, on_spooled) for box in app.config.imap]
        self.tasks: list[asyncio.Task] = []

    def start(self, stopping: asyncio.Event) -> None:
        self.tasks = [asyncio.create_task(p.run(stopping), name=f"imap {p.name}") for p in self.pollers]

    async def stop(self, timeout: float) -> None:
        """Wait for the pollers to notice `stopping`; cancel what hangs on the network."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(self.tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("IMAP: %d mailbox(es) did not stop within %ds; cancelled", len(pending), timeout)

    def report(self) -> dict[str, dict]:
        return {p.name: {**asdict(p.state), **({"oauth": p.tokens.health} if p.tokens else {})} for p in self.pollers}

    def problems(self) -> dict[str, str]:
        """The mailboxes that do not fetch mail now, and why (for /healthz's verdict): a login
        refused, an OAuth2 token that needs a new login, or no connection for several tries
        in a row. A mailbox still starting, or between two tries, is not a problem yet."""
        found = {}
        for p in self.pollers:
            oauth = p.tokens.health if p.tokens else None
            if oauth in (REFRESH_FAILED, NO_TOKEN):
                found[p.name] = f"oauth: {oauth}: run `mailgate oauth login {p.name}`"
            elif p.state.status == LOGIN_FAILED or (p.state.status == DISCONNECTED
                                                    and p.state.failures >= FAILING_AFTER):
                found[p.name] = f"{p.state.status}: {p.state.last_error}"
        return found


# --- blocking helpers (run in a mailbox's thread) ---------------------------------------


def _tls_context(box: ImapConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=box.ca_file or None)
    if not box.verify_certificate:  # only when the operator said so, explicitly
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _login(client: IMAPClient, box: ImapConfig, token: str | None) -> None:
    try:
        if token is None:
            client.login(box.username, box.password)
        else:
            sasl.imap_login(client, box.username, token)
    except LoginError as e:
        if "UNAVAILABLE" in str(e):  # RFC 5530: the server's own trouble, retried like an outage
            raise
        raise LoginFailed(str(e)) from None


def _waiting(client: IMAPClient, max_size: int) -> list[int]:
    """UIDs of the messages in the selected folder that are not over MAX_SIZE, oldest first.
    Messages flagged \\Deleted are on their way out (ours after a crash before the expunge,
    or a person's)."""
    # imaplib keeps every untagged reply it is not asked about (EXISTS, EXPUNGE, COPYUID, …)
    # for the life of the connection; between commands nothing needs them.
    client._imap.untagged_responses.clear()
    client.noop()  # lets the server tell about mail that arrived since the last command
    return sorted(client.search(["NOT", "DELETED", "NOT", "LARGER", str(max_size)]))


def _too_large(client: IMAPClient, max_size: int) -> dict[int, int]:
    """UID → size of the messages in the selected folder over MAX_SIZE bytes."""
    uids = client.search(["NOT", "DELETED", "LARGER", str(max_size)])
    if not uids:
        return {}
    return {uid: data.get(b"RFC822.SIZE", 0) for uid, data in client.fetch(uids, ["RFC822.SIZE"]).items()}


def _move_away(session: Session, uids: list[int], folder: str) -> None:
    """Into FOLDER (MOVE, else COPY + \\Deleted + expunge); with no folder, flag and expunge."""
    client = session.client
    if folder and session.move:
        client.move(uids, folder)
        return
    if folder:
        client.copy(uids, folder)
        client.add_flags(uids, [b"\\Deleted"], silent=True)
    else:
        client.add_flags(uids, [b"\\Seen", b"\\Deleted"], silent=True)
    if session.uidplus:
        client.uid_expunge(uids)
    else:
        client.expunge()  # without UIDPLUS only all \Deleted messages can go at once


def _close(client: IMAPClient, polite: bool) -> None:
    try:
        if polite:
            client.logout()
            return
    except Exception:
        pass
    try:
        client.shutdown()
    except Exception:
        pass  # the connection is gone already


def _return_path(raw: bytes) -> str | None:
    """The envelope sender as the delivering server recorded it; "" for <>, None if absent."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    value = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head).get("Return-Path")
    return None if value is None else email.utils.parseaddr(str(value))[1]


# --- small things ---------------------------------------------------------------------


def _buffered(client: IMAPClient) -> bool:
    """Whether the server's replies already wait in imaplib's read buffer. What a server sends
    together with IDLE's "+ idling" (Dovecot: "* 1 EXISTS" for mail that came after our last
    search) is read into that buffer along with it, and imapclient's idle_check polls only the
    socket, so it would never see them — the message would wait for the next IDLE renewal."""
    sock = client.socket()
    timeout = sock.gettimeout()
    sock.setblocking(False)  # a peek at an empty buffer must not wait for the network
    try:
        return bool(client._imap.file.peek(1))
    except OSError:  # nothing there (TLS says so with an error)
        return False
    finally:
        sock.settimeout(timeout)


def _backoff(failures: int) -> float:
    """Seconds before try number FAILURES+1: exponential with jitter, capped at 30 s."""
    return wait_seconds(_BACKOFF, failures)


def _describe(error: BaseException) -> str:
    """One line for the log and /healthz: the error's type (unless it is one of ours, which say
    it all) and its first line, without the b'' imaplib wraps server replies in."""
    text = first_line(error)
    if text.startswith(("b'", 'b"')) and text[-1:] == text[1]:
        text = text[2:-1]
    if isinstance(error, (LoginFailed, ConnectionLost, NeedsLogin)) or text == type(error).__name__:
        return text
    return f"{type(error).__name__}: {text}"


async def _wait(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep for SECONDS, or less when the daemon stops meanwhile."""
    if seconds > 0:
        try:
            await asyncio.wait_for(stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass
