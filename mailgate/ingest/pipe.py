"""`mailgate deliver`: one message on standard input, for an MTA's pipe transport (SPEC §3.3).

Exit codes follow sysexits: 0 stored and processed (whatever the outcome), 67 (EX_NOUSER)
for a recipient that is not a support address, 75 (EX_TEMPFAIL) when the message could not
be stored or processed for a passing reason — the MTA keeps it and tries again, so we keep
nothing of it ourselves.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from mailgate.app import App
from mailgate.mail.addresses import is_support_address
from mailgate.pipeline import Result
from mailgate.processor import Processor, Transient
from mailgate.spool import Envelope, SpoolError

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
    processor = Processor(app)
    try:
        result = _process(processor, claim)
    except Transient as e:
        return Delivery(EX_TEMPFAIL, error=f"database unavailable: {e}")
    except Exception as e:  # stored, but neither processed nor quarantined: let the MTA keep it
        return Delivery(EX_TEMPFAIL, error=f"cannot process the message now: {type(e).__name__}: {_first_line(e)}")
    return Delivery(EX_OK, result)


def _process(processor: Processor, claim) -> Result | None:
    """Process now; a failure counts as an attempt and is retried at once, up to the limit,
    after which the message is quarantined (kept for the operator: still exit 0).
    None: a running daemon took the message over between two attempts and will finish it.
    When it raises, our copy is gone: the MTA keeps the message and tries again (keeping
    ours too would only make a duplicate)."""
    while True:
        try:
            result = processor.handle(claim)
        except BaseException:
            _forget(claim)  # the claim in hand, which may be a re-claim of the first one
            raise
        if result is not None:
            return result
        claim = processor.spool.claim(claim.spool_id)
        if claim is None:
            return None


def _forget(claim) -> None:
    try:
        os.unlink(claim.path)
    except FileNotFoundError:
        pass
    claim.close()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]
