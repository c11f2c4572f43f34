"""Message-IDs and ticket keys: how a message points at a ticket (SPEC §4.1, §4.5)."""

from __future__ import annotations

import hashlib
import re

_MSGID = re.compile(r"<([^<>\s]+)>")


def message_ids(header: str) -> list[str]:
    """The Message-IDs in an In-Reply-To/References/Message-ID header, with angle brackets.

    Lenient: a bare id without brackets (seen from broken mailers) counts as one too.
    """
    found = [f"<{m}>" for m in _MSGID.findall(header)]
    if not found:
        bare = header.strip()
        if bare and " " not in bare and "@" in bare:
            found = [f"<{bare}>"]
    return found[:50]  # a References header of hundreds of ids is noise, not history


def strip_brackets(value: str) -> str:
    return value.strip().removeprefix("<").removesuffix(">").strip()


def normalise(message_id: str) -> str:
    return strip_brackets(message_id).lower()


def id_hash(message_id: str) -> str:
    """Fixed-length key of a Message-ID (ThreadMessage, de-duplication)."""
    return hashlib.sha256(normalise(message_id).encode("utf-8", "surrogateescape")).hexdigest()


def dedupe_key(message_id: str | None, raw_sha256: str) -> str:
    """SPEC §4.1: by normalised Message-ID, or by the raw bytes' sha256 when there is none."""
    if message_id and normalise(message_id):
        return id_hash(message_id)
    return hashlib.sha256(f"raw:{raw_sha256}".encode()).hexdigest()


def key_pattern(prefixes: str | tuple[str, ...]) -> re.Pattern:
    # "[SD-42]" or a bare "SD-42" as a word of its own; not "XSD-42" nor "SD-42x". Any of
    # PREFIXES (one per desk): a reply threads by any desk's key.
    names = "|".join(re.escape(p) for p in _prefixes(prefixes))
    return re.compile(rf"(?<![A-Za-z0-9])({names})-(\d{{1,9}})(?![A-Za-z0-9])", re.I)


def keys_in_subject(subject: str, prefixes: str | tuple[str, ...]) -> list[str]:
    """Ticket keys in a subject, bracketed ones first, normalised to PREFIX-N."""
    spelled = {p.upper(): p for p in _prefixes(prefixes)}
    pattern = key_pattern(prefixes)
    bracketed, bare = [], []
    for m in pattern.finditer(subject):
        key = f"{spelled[m.group(1).upper()]}-{int(m.group(2))}"
        is_bracketed = m.start() > 0 and subject[m.start() - 1] == "[" and subject[m.end():m.end() + 1] == "]"
        (bracketed if is_bracketed else bare).append(key)
    return list(dict.fromkeys(bracketed + bare))


def _prefixes(prefixes: str | tuple[str, ...]) -> tuple[str, ...]:
    return (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
