"""Text from mail made safe for a terminal (SPEC §9: human-readable output escapes control
characters that came from mail).

A subject may carry ESC sequences that, printed raw, retitle the operator's terminal, move the
cursor, hide lines or fake other output; bidirectional overrides can make text read backwards.
Every such character is shown as a visible escape (`\\x1b`, `\\u202e`) instead. Line breaks
and tabs stay what they are only where the output is meant to have several lines (a
description, a comment body); in a one-line listing they are escaped too.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, the bidirectional embeddings, overrides and isolates, and the
# Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]")
_CONTROL_EXCEPT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def line(value) -> str:
    """VALUE as one line of terminal-safe text (None and numbers as str)."""
    return _CONTROL.sub(_escape, "" if value is None else str(value))


def block(value) -> str:
    """VALUE as terminal-safe text that keeps its line breaks and tabs (CR LF become LF)."""
    text = ("" if value is None else str(value)).replace("\r\n", "\n")
    return _CONTROL_EXCEPT_LINES.sub(_escape, text)
