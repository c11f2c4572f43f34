"""A private Dovecot for the IMAP tests (see /work/shared/notes/dovecot.md for the facts).

`dovecot -F -c CONF` runs as a child of the test on a free loopback port, with a passwd-file
of throwaway users and their Maildirs in a short temporary directory (Dovecot's Unix socket
paths live under base_dir and fail when it is long). The instance can be stopped and started
again on the same port and mail, which is how the tests simulate a server restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.support import group_alive, wait_for

NOBODY = 65534  # Dovecot's mail processes run as nobody; the Maildirs belong to it
USERS = {"support": "secret", "sales": "secret2"}

CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = {instance}
protocols = imap
listen = 127.0.0.1
{ssl}
auth_mechanisms = plain login{oauth_mechanisms}
auth_cache_size = 0
default_login_user = dovenull
default_internal_user = dovecot
default_internal_group = dovecot
first_valid_uid = 500
mail_location = maildir:~/Maildir
{capability}
{oauth_passdb}
passdb {{
  driver = passwd-file
  args = {base}/passwd
}}
userdb {{
  driver = passwd-file
  args = {base}/passwd
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {tls_port}
  }}
}}
"""

NO_TLS = """\
ssl = no
disable_plaintext_auth = no"""

# Dovecot counts loopback connections as secured and lets them log in without TLS even so;
# its log tells the two apart ("TLS" or "secured" in the Login line).
# Access tokens checked by introspection (RFC 7662) at the test's authorisation server
# (tests/oauthserver.py); the token's username must be the one logging in.
OAUTH_PASSDB = """\
# A refused token is how a client learns that it expired early: no 2 s delay before the NO.
# (Dovecot's auth penalty still slows the next login from the address, by about 4 s.)
auth_failure_delay = 0
passdb {{
  driver = oauth2
  mechanisms = {mechanisms}
  args = {base}/dovecot-oauth2.conf.ext
}}"""
OAUTH_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
"""

WITH_TLS = """\
ssl = required
ssl_cert = <{base}/cert.pem
ssl_key = <{base}/key.pem"""


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


class Dovecot:
    """One private Dovecot: start(), stop(), start() again; IMAP helpers for the tests.
    With tls=True it has a self-signed certificate (`cert`, for clients' ca_file), offers
    STARTTLS on `port` and implicit TLS on `tls_port`."""

    def __init__(self, users: dict[str, str], tls: bool = False, capability: str | None = None,
                 introspection_url: str | None = None, oauth_mechanisms: str = "xoauth2 oauthbearer"):
        self.users = dict(users)
        self.capability = capability
        self.introspection_url = introspection_url  # set: users may also log in with OAuth2 tokens
        self.oauth_mechanisms = oauth_mechanisms
        self.base = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))
        self.port = _free_port()
        self.tls_port = _free_port() if tls else 0
        self.cert = self.base / "cert.pem" if tls else None
        self.proc: subprocess.Popen | None = None
        self.conf = self._write_files()

    def _write_files(self) -> Path:
        os.chmod(self.base, 0o711)  # nobody must reach the Maildirs below it
        lines = []
        for user, password in self.users.items():
            home = self.base / "mail" / user
            home.mkdir(parents=True)
            os.chown(home, NOBODY, NOBODY)
            lines.append(f"{user}:{{PLAIN}}{password}:{NOBODY}:{NOBODY}::{home}\n")
        (self.base / "passwd").write_text("".join(lines))
        if self.cert:
            _self_signed(self.cert, self.base / "key.pem")
        conf = self.base / "dovecot.conf"
        tls_settings = (WITH_TLS if self.cert else NO_TLS).format(base=self.base)
        capability = f"imap_capability = {self.capability}" if self.capability else ""
        conf.write_text(CONF.format(base=self.base, port=self.port, tls_port=self.tls_port, ssl=tls_settings,
                                    instance=f"mgtest-{uuid.uuid4().hex[:8]}", capability=capability,
                                    **self._oauth_settings()))
        return conf

    def _oauth_settings(self) -> dict[str, str]:
        if not self.introspection_url:
            return {"oauth_mechanisms": "", "oauth_passdb": ""}
        (self.base / "dovecot-oauth2.conf.ext").write_text(OAUTH_CONF.format(url=self.introspection_url))
        return {"oauth_mechanisms": f" {self.oauth_mechanisms}",
                "oauth_passdb": OAUTH_PASSDB.format(base=self.base, mechanisms=self.oauth_mechanisms)}

    def start(self, timeout: float = 20.0) -> "Dovecot":
        with open(self.base / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(
                [dovecot_binary(), "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,  # its own process group: stop() ends the whole instance
            )
        wait_for(lambda: self._accepts() or self.proc.poll() is not None, timeout, message="dovecot to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"dovecot exited at start:\n{self.log()}")
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(64).startswith(b"* OK")  # the greeting: login processes are up
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._end_group(timeout)

    def kill(self) -> None:
        """A crash: every process of the instance ends at once, no BYE to anyone."""
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._end_group(20.0)

    def _end_group(self, timeout: float) -> None:
        """End what the master leaves behind: its imap processes outlive it and keep serving
        their connections, whereas a real restart (systemd stops the whole cgroup) drops them."""
        group = self.proc.pid  # start_new_session made the master the leader of this group
        if _signal_group(group, signal.SIGTERM):
            try:
                wait_for(lambda: not group_alive(group), timeout, message="dovecot's processes to end")
            except AssertionError:
                _signal_group(group, signal.SIGKILL)

    def kick(self, user: str) -> None:
        """Drop USER's sessions, as a server does when their token expires or is revoked
        (Exchange Online closes IMAP sessions whose token has run out)."""
        doveadm = shutil.which("doveadm") or shutil.which("doveadm", path="/usr/bin:/usr/sbin")
        subprocess.run([doveadm, "-c", str(self.conf), "kick", user], check=True, capture_output=True)

    def remove(self) -> None:
        """The end of a test: nothing of the instance is needed any more, so no graceful stop."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.base / "dovecot.log", self.base / "stderr.log") if p.exists()]
        return "\n".join(parts)

    # --- IMAP from the test's side -------------------------------------------------------

    def client(self, user: str = "support") -> IMAPClient:
        if self.cert:
            context = ssl.create_default_context(cafile=str(self.cert))
            client = IMAPClient("127.0.0.1", port=self.tls_port, ssl=True, ssl_context=context, timeout=30)
        else:
            client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        client.login(user, self.users[user])
        return client

    def append(self, raw: bytes | list[bytes], user: str = "support", folder: str = "INBOX") -> None:
        with self.client(user) as client:
            for message in raw if isinstance(raw, list) else [raw]:
                client.append(folder, message)

    def count(self, folder: str, user: str = "support") -> int | None:
        """Messages in FOLDER that are not flagged deleted; None when the folder does not exist."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                return None
            client.select_folder(folder, readonly=True)
            return len(client.search(["NOT", "DELETED"]))

    def total(self, folder: str, user: str = "support") -> int | None:
        """All messages in FOLDER, deleted or not (EXISTS); None when the folder does not exist."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                return None
            return client.select_folder(folder, readonly=True)[b"EXISTS"]


def _signal_group(group: int, sig: int) -> bool:
    """Send SIG to the process group; False when no process is left in it."""
    try:
        os.killpg(group, sig)
        return True
    except ProcessLookupError:
        return False


def _self_signed(cert: Path, key: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running(tls: bool, capability: str | None = None):
    if dovecot_binary() is None:
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd; scripts/test.sh does it)")
    server = Dovecot(USERS, tls=tls, capability=capability)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def dovecot():
    """A started private Dovecot with the users of USERS; removed at the end."""
    yield from _running(tls=False)


@pytest.fixture
def dovecot_basic():
    """One that advertises only IMAP4rev1 after login: no MOVE, UIDPLUS or IDLE, as older or
    smaller servers do (Dovecot's imap_capability replaces the list it announces)."""
    yield from _running(tls=False, capability="IMAP4rev1 LITERAL+ SASL-IR ID ENABLE")


@pytest.fixture
def dovecot_tls():
    """The same with TLS required: a self-signed certificate, STARTTLS and implicit TLS."""
    yield from _running(tls=True)
