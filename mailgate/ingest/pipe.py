"""`mailgate deliver`: one message on standard input, for an MTA's pipe transport (SPEC §3.3).

Exit codes follow sysexits: 0 stored and processed (whatever the outcome), 65 (EX_DATAERR)
for a message over `smtp.max_message_size` (the one size limit of every inbound path; the
MTA bounces it), 67 (EX_NOUSER) for a recipient that is not a support address, 75
(EX_TEMPFAIL) when the message could not be stored or processed for a passing reason — the
MTA keeps it and tries again, so we keep nothing of it ourselves (the claim is not
acknowledged: settling it drops our copy). The command line around this (mailgate.cli)
answers 75 for anything else too: a usage error, a bad config file.

The message is processed in a forked child under the budget of every message
(mailgate.core.budget): a child that overruns it is killed, and one that dies is not waited
for again; either way this process has the message quarantined, unparsed, and exits 0 — the
MTA is not asked to try again what would fail again. (`[processing] processes = 0`: in this
process, without a budget.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mailgate.app import App
from mailgate.core.budget import Budget, run_bounded
from mailgate.core.pipeline import Result
from mailgate.core.runner import Handled, Runner
from mailgate.core.spool import Disposition, Envelope, SpoolError
from mailgate.mail.addresses import is_support_address

log = logging.getLogger("mailgate.pipe")

EX_OK, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL = 0, 65, 67, 75


def read_message(stream, limit: int) -> bytes | None:
    """The message on STREAM, or None when it is larger than LIMIT bytes; never more than
    LIMIT + 1 bytes are read into memory."""
    raw = stream.read(limit + 1)
    return None if len(raw) > limit else raw


@dataclass
class Delivery:
    exit_code: int
    result: Result | None = None
    error: str | None = None


def deliver(app: App, raw: bytes, sender: str | None, recipient: str | None) -> Delivery:
    if recipient and not is_support_address(recipient, app.config.support_addresses):
        return Delivery(EX_NOUSER, error=f"{recipient}: not a support address")
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
    budget = Budget.of(app.config)
    app.close()  # no database connection crosses the fork: the child opens its own
    outcome = run_bounded(lambda: _handle(runner, claim), budget)
    if outcome.value is not None:
        return outcome.value
    why = budget.describe_overrun() if outcome.overrun else f"the process working on it died ({outcome.died})"
    return runner.over_budget(claim, why)
