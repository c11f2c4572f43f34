"""A ticket summary from a mail subject (SPEC §4.8)."""

from __future__ import annotations

import re

MAX_SUMMARY = 255
NO_SUBJECT = "(no subject)"

# Reply and forward prefixes of the usual clients, English, German and Nordic, any number deep:
# "Re:", "RE[2]:", "Fwd:", "FW:", "AW:", "WG:", "SV:", "VS:".
_PREFIX = re.compile(r"^\s*(re|fwd?|aw|wg|sv|vs|antw|tr)\s*(\[\d+\]|\(\d+\))?\s*:\s*", re.I)


def summary(subject: str, key_prefix: str) -> str:
    text = " ".join(subject.split())
    tag = re.compile(rf"\[\s*{re.escape(key_prefix)}-\d+\s*\]", re.I)
    previous = None
    while previous != text:  # prefixes and tags interleave: "AW: [SD-1] Re: ..."
        previous = text
        text = tag.sub(" ", text).strip()
        text = _PREFIX.sub("", text).strip()
    text = " ".join(text.split())
    return text[:MAX_SUMMARY].rstrip() or NO_SUBJECT
