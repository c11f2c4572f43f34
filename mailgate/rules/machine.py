"""Is this mail written by a machine? (SPEC §4.3) — one named rule per signal.

Machine mail never opens a ticket, never becomes a comment, never gets a reply and never
counts as customer feedback. Each rule looks at the envelope and the top-level headers and
returns whether it matches; `reason` gives the name of the first that does (for the log and
the inbound record).
"""

from __future__ import annotations

import re
from email.message import Message
from typing import Callable

# Subjects of out-of-office replies sent without any of the standard headers.
_OOO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?reply|autoreply|"
    r"automatische antwort|abwesenheitsnotiz|abwesenheit|i am out of the office|"
    r"i'm out of the office|away from (the )?office|on vacation|urlaubsbenachrichtigung|"
    r"r[ée]ponse automatique|absence du bureau|respuesta autom[áa]tica|risposta automatica)\b",
    re.I,
)
_MACHINE_LOCALPARTS = ("mailer-daemon", "postmaster")


def _auto_submitted(headers: Message, sender, from_address) -> bool:
    value = str(headers.get("Auto-Submitted", "") or "").strip().lower()
    return bool(value) and not value.startswith("no")


def _precedence(headers: Message, sender, from_address) -> bool:
    return str(headers.get("Precedence", "") or "").strip().lower() in ("bulk", "junk", "list")


def _autoreply_header(headers: Message, sender, from_address) -> bool:
    return any(headers.get(h) is not None for h in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"))


def _null_sender(headers: Message, sender, from_address) -> bool:
    return sender == "" or sender == "<>"


def _daemon_sender(headers: Message, sender, from_address) -> bool:
    addresses = [a for a in (sender, from_address) if a]
    return any(a.partition("@")[0].lower() in _MACHINE_LOCALPARTS for a in addresses)


def _delivery_report(headers: Message, sender, from_address) -> bool:
    return headers.get_content_type() == "multipart/report"


def _ooo_subject(headers: Message, sender, from_address) -> bool:
    subject = str(headers.get("Subject", "") or "")
    try:
        from email.header import decode_header, make_header

        subject = str(make_header(decode_header(subject)))
    except Exception:
        pass
    return bool(_OOO_SUBJECT.match(subject))


RULES: list[tuple[str, Callable[[Message, str | None, str | None], bool]]] = [
    ("auto-submitted", _auto_submitted),
    ("precedence", _precedence),
    ("x-autoreply", _autoreply_header),
    ("null-sender", _null_sender),
    ("daemon-sender", _daemon_sender),
    ("delivery-report", _delivery_report),
    ("out-of-office-subject", _ooo_subject),
]


def reason(headers: Message, envelope_sender: str | None, from_address: str | None) -> str | None:
    """The name of the first rule that marks the message as machine mail, or None."""
    for name, rule in RULES:
        if rule(headers, envelope_sender, from_address):
            return name
    return None
