"""A ticket summary from a mail subject (SPEC §4.8)."""

from __future__ import annotations

import re

MAX_SUMMARY = 255
NO_SUBJECT = "(no subject)"

# Reply and forward prefixes of the usual clients, English, German and Nordic, any number deep:
# "Re:", "RE[2]:", "Fwd:", "FW:", "AW:", "WG:", "SV:", "VS:".
_PREFIX = re.compile(r"^\s*(re|fwd?|aw|wg|sv|vs|antw|tr)\s*(\[\d+\]|\(\d+\))?\s*:\s*", re.I)


def summary(subject: str, key_prefixes: str | tuple[str, ...]) -> str:
    """The summary of SUBJECT: prefixes and the tags of KEY_PREFIXES (every desk's) removed."""
    text = " ".join(subject.split())
    names = "|".join(re.escape(p) for p in ((key_prefixes,) if isinstance(key_prefixes, str) else key_prefixes))
    tag = re.compile(rf"\[\s*(?:{names})-\d+\s*\]", re.I)
    previous = None
    while previous != text:  # prefixes and tags interleave: "AW: [SD-1] Re: ..."
        previous = text
        text = tag.sub(" ", text).strip()
        text = _PREFIX.sub("", text).strip()
    text = " ".join(text.split())
    return text[:MAX_SUMMARY].rstrip() or NO_SUBJECT
