"""`mailgate deliver`: one message on standard input, for an MTA's pipe transport (SPEC §3.3).

Exit codes follow sysexits: 0 stored and processed (whatever the outcome), 65 (EX_DATAERR)
for a message over `smtp.max_message_size` (the one size limit of every inbound path; the
MTA bounces it), 67 (EX_NOUSER) for a recipient that is not a support address, 75
(EX_TEMPFAIL) when the message could not be stored or processed for a passing reason — the
MTA keeps it and tries again, so we keep nothing of it ourselves (the claim is not
acknowledged: settling it drops our copy). The command line around this (mailgate.cli)
answers 75 for anything else too: a usage error, a bad config file.

When a daemon runs on the same state directory, the message is handed to it over its socket
(`hand_over`; the daemon's side is mailgate.ingest.handoff): the daemon spools it with fsync,
processes it like any other and answers with its outcome — no database, parser or template
is loaded here, so a delivery costs little more than starting Python. With no daemon to
answer, the message is processed here (`deliver`):

The message is processed in a forked child under the budget of every message
(mailgate.core.budget): a child that overruns it is killed, and one that dies is not waited
for again; either way this process has the message quarantined, unparsed, and exits 0 — the
MTA is not asked to try again what would fail again. (`[processing] processes = 0`: in this
process, without a budget.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from mailgate.core.spool import Disposition, Envelope, SpoolError
from mailgate.mail.addresses import is_support_address

if TYPE_CHECKING:
    from mailgate.app import App
    from mailgate.core.runner import Handled, Runner

log = logging.getLogger("mailgate.pipe")

EX_OK, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL = 0, 65, 67, 75
SOCKET_NAME = "deliver.sock"  # in the state directory
# How long `deliver` waits for the daemon's answer: the daemon answers within
# handoff.OUTCOME_SECONDS of having spooled the message (with or without an outcome).
ANSWER_SECONDS = 120
_SUN_PATH_MAX = 100  # sockaddr_un has room for 107 bytes; a longer path goes through /proc


def read_message(stream, limit: int) -> bytes | None:
    """The message on STREAM, or None when it is larger than LIMIT bytes; never more than
    LIMIT + 1 bytes are read into memory."""
    raw = stream.read(limit + 1)
    return None if len(raw) > limit else raw


@dataclass
class Answer:
    """What the daemon said became of a handed-over message (None: not known yet)."""

    outcome: str | None
    ticket: str | None


@dataclass
class Delivery:
    exit_code: int
    result: object | None = None  # the pipeline's Result, or the daemon's Answer: .outcome, .ticket
    error: str | None = None


def refusal(config, size: int, recipient: str | None) -> Delivery | None:
    """The refusal a message of SIZE bytes for RECIPIENT gets whoever takes it, or None."""
    if size > config.smtp.max_message_size:
        return Delivery(EX_DATAERR, error=f"5.3.4 message too big: over smtp.max_message_size "
                                          f"({config.smtp.max_message_size} bytes)")
    if recipient and not is_support_address(recipient, config.support_addresses):
        return Delivery(EX_NOUSER, error=f"{recipient}: not a support address")
    return None


# --- to the daemon ---------------------------------------------------------------------------


def socket_path(config) -> Path:
    return Path(config.state_dir) / SOCKET_NAME


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for bind or connect that names PATH, however long (through /proc when it is
    too long for sockaddr_un)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def hand_over(config, raw: bytes, sender: str | None, recipient: str | None) -> Delivery | None:
    """Hand RAW to the daemon running on CONFIG's state directory: it answers once the message is
    spooled (fsynced) and processed, or has waited long enough for that — either way the message
    is its own then. None when no daemon takes it (no socket, a stale one, not ours to use)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(socket_path(config)) as address:
            sock.connect(address)
    except OSError:
        sock.close()
        return None
    with sock:
        sock.settimeout(ANSWER_SECONDS)
        try:
            head = {"sender": sender, "recipient": recipient, "size": len(raw)}
            sock.sendall(json.dumps(head).encode() + b"\n" + raw)
            answer = json.loads(sock.makefile("rb").readline() or b"null")
            code = answer["code"]
        except (OSError, ValueError, TypeError, KeyError) as e:
            # Spooled or not, we cannot tell: the MTA tries again, de-duplication drops a copy.
            return Delivery(EX_TEMPFAIL, error=f"the daemon gave no answer: {e or type(e).__name__}")
    return Delivery(code, Answer(answer.get("outcome"), answer.get("ticket")), answer.get("error"))


# --- here, without a daemon ------------------------------------------------------------------


def deliver(app: App, raw: bytes, sender: str | None, recipient: str | None) -> Delivery:
    from mailgate.core.runner import Handled, Runner  # the pipeline: parsers, database, templates

    if refused := refusal(app.config, len(raw), recipient):
        return refused
    envelope = Envelope(sender=sender, recipients=[recipient] if recipient else [], source="pipe")
    try:
        claim = app.spool.put_claimed(raw, envelope)
    except SpoolError as e:
        return Delivery(EX_TEMPFAIL, error=e.strerror)
    runner = Runner(app)
    handled = Handled(Disposition.WAIT, error="interrupted")  # until handle() says otherwise
    try:
        handled = _handle_bounded(app, runner, claim) if app.config.processing.processes else _handle(runner, claim)
    finally:
        app.spool.settle(claim, handled.disposition)
    if handled.disposition is Disposition.DONE:
        return Delivery(EX_OK, handled.result)
    reason = "database unavailable" if handled.disposition is Disposition.WAIT else "cannot process the message now"
    return Delivery(EX_TEMPFAIL, error=f"{reason}: {handled.error}")


def _handle(runner: Runner, claim) -> Handled:
    """A failure is retried at once, up to the limit, after which the runner quarantines the
    message (kept for the operator: still exit 0)."""
    handled = runner.handle(claim)
    while handled.disposition is Disposition.RETRY:
        claim.envelope.attempts += 1
        handled = runner.handle(claim)
    return handled


def _handle_bounded(app: App, runner: Runner, claim) -> Handled:
    """`_handle` in a child under the budget; the runner decides when the child gave no answer."""
    from mailgate.core.budget import Budget, run_bounded

    budget = Budget.of(app.config)
    app.close()  # no database connection crosses the fork: the child opens its own
    outcome = run_bounded(lambda: _handle(runner, claim), budget)
    if outcome.value is not None:
        return outcome.value
    why = budget.describe_overrun() if outcome.overrun else f"the process working on it died ({outcome.died})"
    return runner.over_budget(claim, why)
