"""`mailgate deliver`: one message on standard input, for an MTA's pipe transport (SPEC §3.3).

Exit codes follow sysexits: 0 stored and processed (whatever the outcome), 67 (EX_NOUSER)
for a recipient that is not a support address, 75 (EX_TEMPFAIL) when the message could not
be stored or processed for a passing reason — the MTA keeps it and tries again, so we keep
nothing of it ourselves (the claim is not acknowledged: settling it drops our copy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mailgate.app import App
from mailgate.core.pipeline import Result
from mailgate.core.runner import Handled, Runner
from mailgate.core.spool import Disposition, Envelope, SpoolError
from mailgate.mail.addresses import is_support_address

log = logging.getLogger("mailgate.pipe")

EX_OK, EX_NOUSER, EX_TEMPFAIL = 0, 67, 75


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
        handled = runner.handle(claim)
        # A failure is retried at once, up to the limit, after which the runner quarantines
        # the message (kept for the operator: still exit 0).
        while handled.disposition is Disposition.RETRY:
            claim.envelope.attempts += 1
            handled = runner.handle(claim)
    finally:
        app.spool.settle(claim, handled.disposition)
    if handled.disposition is Disposition.DONE:
        return Delivery(EX_OK, handled.result)
    reason = "database unavailable" if handled.disposition is Disposition.WAIT else "cannot process the message now"
    return Delivery(EX_TEMPFAIL, error=f"{reason}: {handled.error}")
