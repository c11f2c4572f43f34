"""Issue 14 (9): the README's "Postfix in front" steps against a real Postfix (Debian's
package). The test reads main.cf, the maps and the master.cf lines out of the README itself,
so what is tested is what an operator copies. Only what a private instance needs is added:
its own config, queue and data directories, an smtpd on a loopback port, an empty
mydestination, and a `mynetworks` that does not contain loopback (so the test's client is
"the internet" and may not relay).

One Postfix start for all cases: mail to the support address reaches a real `mailgate serve`
over LMTP; mail to a second support address goes through the pipe transport into
`mailgate deliver`; an address of the support domain that is not a support address, and a
foreign domain, are refused at RCPT by Postfix.

Postfix's pipe refuses to run a command as root, and the interpreter of the test's venv may
live where an unprivileged user cannot read it (a pyenv under /root). The pipe runs
`mailgate deliver` as `nobody` with the system's Python of the same version and the venv's
packages on PYTHONPATH; that part is skipped, saying why, when there is no such Python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import add_customer, make_message, wait_for, write_config

ROOT = Path(__file__).resolve().parents[2]
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
PIPE_ADDRESS = "help@example.com"

pytestmark = [
    pytest.mark.one_database,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(POSTFIX), reason="Postfix is not installed (scripts/test.sh installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance is started as root"),
]

# What a private instance needs besides the README's settings: nothing of the machine's own
# Postfix (config, queue, ports) is used or touched.
MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def readme_files() -> dict[str, list[str]]:
    """The lines the README's Postfix section gives for each file (by its `# /etc/...` header)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Postfix in front"):text.index("**A reverse proxy")]
    files: dict[str, list[str]] = {}
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        current = None
        for line in block.splitlines():
            if m := re.match(r"# (/etc/postfix/\S+)", line):
                current = files.setdefault(m.group(1), [])
            elif current is not None and line.strip():
                current.append(line)
    return files


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostfix:
    def __init__(self, root: Path, lmtp_port: int, pipe_argv_prefix: list[str] | None):
        self.root, self.conf, self.smtp_port = root, root / "conf", _free_port()
        self.log = root / "maillog"
        files = readme_files()
        self.conf.mkdir()
        for d in ("queue", "data"):
            (root / d).mkdir()
        shutil.chown(root / "data", "postfix")
        main = [line.replace("/etc/postfix/", f"{self.conf}/") for line in files["/etc/postfix/main.cf"]]
        main += [f"queue_directory = {root / 'queue'}", f"data_directory = {root / 'data'}",
                 "mail_owner = postfix", "setgid_group = postdrop", "compatibility_level = 3.6",
                 "inet_interfaces = loopback-only", "inet_protocols = ipv4", "mydestination =",
                 "myhostname = mx.test.example", "mynetworks = 192.0.2.1/32", f"maillog_file = {self.log}", f"maillog_file_prefixes = {root}",
                 "smtpd_banner = $myhostname ESMTP", "delay_warning_time = 0"]
        (self.conf / "main.cf").write_text("\n".join(main) + "\n")
        master = MASTER.format(port=self.smtp_port)
        pipe = files["/etc/postfix/master.cf"]
        if pipe_argv_prefix:
            master += "\n".join(pipe).replace("user=mailgate", "user=nobody").replace(
                "/opt/mailgate/.venv/bin/mailgate --config /etc/mailgate/mailgate.toml",
                " ".join(pipe_argv_prefix)) + "\n"
        (self.conf / "master.cf").write_text(master)
        recipients = files["/etc/postfix/mailgate_recipients"] + [f"{PIPE_ADDRESS} OK"]
        (self.conf / "mailgate_recipients").write_text("\n".join(recipients) + "\n")
        lmtp, piped = files["/etc/postfix/transport"]  # the README's two alternatives, in order
        transport = [lmtp.replace("127.0.0.1:8024", f"127.0.0.1:{lmtp_port}")]
        if pipe_argv_prefix:
            transport.append(piped.replace("support@example.com", PIPE_ADDRESS))
        (self.conf / "transport").write_text("\n".join(transport) + "\n")

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        postmap = self.run("postmap", "-c", str(self.conf), f"{self.conf}/mailgate_recipients", f"{self.conf}/transport")
        assert postmap.returncode == 0, postmap.stderr
        check = self.run(POSTFIX, "-c", str(self.conf), "check")
        assert check.returncode == 0, check.stderr + self._log()
        started = self.run(POSTFIX, "-c", str(self.conf), "start")
        assert started.returncode == 0, started.stderr + self._log()
        wait_for(self._listening, timeout=30, message="Postfix's smtpd")

    def stop(self) -> None:
        self.run(POSTFIX, "-c", str(self.conf), "stop")
        wait_for(lambda: self.run(POSTFIX, "-c", str(self.conf), "status").returncode != 0, timeout=30,
                 interval=0.2, message="Postfix to stop")

    def _listening(self) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=5):
                return True
        except OSError:
            return False

    def _log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def delivered(self, recipient: str) -> str | None:
        """Postfix's log line saying a message to RECIPIENT was delivered, if there is one."""
        return next((line for line in self._log().splitlines()
                     if f"to=<{recipient}>" in line and "status=sent" in line), None)


def _pipe_command(pipe_root: Path) -> list[str] | None:
    """`mailgate` as user nobody can run it, or None when this machine has no such Python."""
    if not os.path.exists(SYSTEM_PYTHON):
        return None
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        return None
    path = f"{ROOT}:{sysconfig.get_paths()['purelib']}"
    return ["/usr/bin/env", f"PYTHONPATH={path}", SYSTEM_PYTHON, "-m", "mailgate", "--config", str(pipe_root / "mailgate.toml")]


def _as_nobody(command: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(command + list(args), capture_output=True, text=True, user="nobody", group="nogroup",
                          env=env, timeout=60, cwd="/")


@pytest.fixture
def pipe_root():
    root = Path(tempfile.mkdtemp(prefix="mailgate-pipe-", dir="/tmp"))  # nobody can reach it, unlike tmp_path
    root.chmod(0o755)
    write_config(root / "mailgate.toml", root / "state", f"sqlite:///{root / 'mailgate.db'}",
                 {"tickets": {"support_addresses": [PIPE_ADDRESS]}})
    for path in (root, *root.iterdir()):
        shutil.chown(path, "nobody", "nogroup")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postfix_root():
    root = Path(tempfile.mkdtemp(prefix="mailgate-postfix-", dir="/tmp"))  # postfix's daemons must reach it
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_readmes_postfix_setup_with_a_real_postfix(make_config, daemon, cli, pipe_root, postfix_root):
    started = time.monotonic()
    config = make_config("lmtp.toml", smtp={"lmtp": True})
    add_customer(lambda *a, **k: cli(*a, config=config, **k))
    mailgate = daemon(config)
    pipe = _pipe_command(pipe_root)
    if pipe:
        nobody = lambda *args: _as_nobody(pipe, *args)  # noqa: E731
        add_customer(lambda *a, **k: cli(*a, config=pipe_root / "mailgate.toml", **k))
        for path in (pipe_root, *pipe_root.rglob("*")):  # made by root just now: nobody's from here on
            shutil.chown(path, "nobody", "nogroup")
    postfix = PrivatePostfix(postfix_root, mailgate.smtp_port, pipe)
    postfix.start()
    try:
        with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30) as client:
            client.ehlo("client.acme.example")
            assert client.esmtp_features["size"] == "26148864"  # message_size_limit, advertised
            assert client.mail("alice@acme.example") == (250, b"2.1.0 Ok")
            code, text = client.rcpt("other@example.com")  # the support domain, not a support address
            assert code == 550 and b"5.1.1" in text and b"relay recipient table" in text
            code, text = client.rcpt("someone@elsewhere.example")  # not ours at all: no relay
            assert code == 554 and b"Relay access denied" in text
            assert client.rcpt("support+billing@example.com")[0] == 250
            assert client.rcpt("support@example.com")[0] == 250
            client.data(make_message(subject="Through Postfix and LMTP"))
            if pipe:
                client.sendmail("alice@acme.example", [PIPE_ADDRESS], make_message(subject="Through the pipe"))

        tickets = wait_for(lambda: json.loads(cli("ticket", "list", "--json", config=config)[1]), timeout=60,
                           message="the LMTP delivery")
        assert [t["summary"] for t in tickets] == ["Through Postfix and LMTP"]
        assert wait_for(lambda: postfix.delivered("support@example.com"), message="Postfix's log of it")
        if pipe:
            line = wait_for(lambda: postfix.delivered(PIPE_ADDRESS), timeout=60, message="the pipe delivery")
            assert "relay=mailgate" in line
            result = nobody("ticket", "list", "--json")
            assert result.returncode == 0, result.stderr
            inbox = nobody("inbox", "list", "--json").stdout  # what became of it, when it is no ticket
            assert [t["summary"] for t in json.loads(result.stdout)] == ["Through the pipe"], inbox
        else:
            pytest.skip(f"LMTP and RCPT checked; the pipe needs {SYSTEM_PYTHON} (the venv's Python "
                        "version) for user nobody, and this machine has none")
    finally:
        postfix.stop()
    print(f"Postfix test: {time.monotonic() - started:.1f} s")  # noqa: T201 - the report's figure
