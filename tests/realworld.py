"""The real-world mail corpus (`../shared/realworld/`, see its README) as test cases, with
the expectations derived from its own files and the in-memory adjustments its README names.

Nothing of the corpus is copied into the project: it is read where it lies (the env var
MAILGATE_REALWORLD overrides the place) and changed only in memory — a Message-ID of its
own for every message, a domain for Zammad's `name@redacted` senders, and for each reply
case a `Re: [SD-n] …` subject of a ticket the same sender opened first.
"""

from __future__ import annotations

import html
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(os.environ.get("MAILGATE_REALWORLD", Path(__file__).resolve().parents[1] / "../shared/realworld")).resolve()

NO_CONTENT = "no visible content"  # Zammad's placeholder for an empty body
_MESSAGE_ID = re.compile(rb"(?im)^message-id:[^\n]*\n(?:[ \t][^\n]*\n)*")
_REDACTED = re.compile(rb"@redacted(?![\w.-])")
# Names Zammad makes up for parts the sender did not name; ours are `attachment-N.ext` or the
# part's description. Compared as "a generated name", not letter by letter.
_ZAMMAD_GENERATED = re.compile(r"^(file|(video|image|document|delivery-status|audio|text)\d*\.\w+|\d+(\.\d+)+)$")


def available() -> bool:
    return (ROOT / "zammad" / "expected.json").is_file() and (ROOT / "replies.json").is_file()


@dataclass
class ZammadCase:
    name: str
    raw: bytes
    subject: str
    first_line: str  # "" when Zammad saw no visible content
    attachments: list[str]


@dataclass
class ReplyCase:
    id: str
    kind: str
    body: bytes
    must_contain: list[str]
    must_not_contain: list[str]
    scored: bool


@dataclass
class Score:
    passed: int = 0
    failed: list[str] = field(default_factory=list)

    def add(self, ok: bool, name: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)

    @property
    def total(self) -> int:
        return self.passed + len(self.failed)

    @property
    def ratio(self) -> float:
        return self.passed / self.total if self.total else 1.0

    def line(self, label: str) -> str:
        failed = f"  failing: {', '.join(self.failed)}" if self.failed else ""
        return f"{label:<34} {self.passed:>3}/{self.total:<3} {100 * self.ratio:5.1f} %{failed}"


# --- the cases ------------------------------------------------------------------------------


def zammad_cases() -> list[ZammadCase]:
    expected = json.loads((ROOT / "zammad" / "expected.json").read_text())
    cases = []
    for name, entry in sorted(expected.items()):
        raw = (ROOT / "zammad" / f"{name}.box").read_bytes()
        cases.append(ZammadCase(
            name=name,
            raw=_adjusted(raw, f"zammad-{name}"),
            subject=entry.get("subject") or "",
            first_line=first_line(entry.get("body") or "", entry.get("content_type") or "text/plain"),
            attachments=_expected_names(entry.get("attachments", [])),
        ))
    return cases


def reply_cases() -> list[ReplyCase]:
    cases = []
    for entry in json.loads((ROOT / "replies.json").read_text()):
        body = (ROOT / entry["file"]).read_bytes() if entry.get("file") else entry["body"].encode()
        cases.append(ReplyCase(entry["id"], entry["kind"], body, entry.get("must_contain", []),
                               entry.get("must_not_contain", []), entry.get("scored", True)))
    return cases


def other_mail() -> list[tuple[str, bytes]]:
    """mail-parser's samples: no expectations but being processed."""
    folder = ROOT / "mail-parser"
    return [(f"mail-parser/{p.name}", _adjusted(p.read_bytes(), f"mp-{p.name}")) for p in sorted(folder.iterdir())]


def reply_message(case: ReplyCase, sender: str, key: str) -> bytes:
    head = (f"From: Reply Tester <{sender}>\r\nTo: support@example.com\r\nSubject: Re: [{key}] Question {case.id}\r\n"
            f"Message-ID: <reply-{case.id.replace('/', '-')}@corpus.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
    return head.encode() + case.body


# --- expectations ---------------------------------------------------------------------------


def first_line(body: str, content_type: str) -> str:
    """The first line of visible text of Zammad's expected body (HTML read plainly here, not
    by mailgate's converter, so the test does not grade mailgate by its own reading)."""
    if body.strip() == NO_CONTENT:
        return ""
    if content_type == "text/html":
        body = re.sub(r"(?is)<(br|/p|/div|p|div|tr|/tr|li|h\d|/h\d|center|table)\b[^>]*>", "\n", body)
        body = html.unescape(re.sub(r"(?s)<[^>]*>", "", body))
    for line in body.splitlines():
        if normalised(line):
            return normalised(line)[:80]
    return ""


def normalised(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).replace("\xa0", " ").split())


def _expected_names(attachments: list[dict]) -> list[str]:
    """Zammad's attachment names less what is Zammad's own doing: its copy of the HTML body
    (`message.html`, original-format) and of an unnamed HTML part it did not show
    (`document.html`: mailgate puts that part's text into the body, as issue 15 asks), and
    the digit it puts into the name of a second file of the same name."""
    names = []
    for a in attachments:
        preferences = a.get("preferences") or {}
        if preferences.get("original-format"):
            continue
        if re.fullmatch(r"document\d*\.html", a["filename"]) and "name=" not in preferences.get("Content-Type", ""):
            continue
        names.append(_undeduplicated(a["filename"], names))
    return names


def _undeduplicated(name: str, earlier: list[str]) -> str:
    stem, dot, rest = name.partition(".")
    if stem.endswith("1") and dot and stem[:-1] + dot + rest in earlier:
        return stem[:-1] + dot + rest
    return name


def names_match(ours: list[tuple[str, bool]], expected: list[str]) -> bool:
    """The same file names, in any order. A name Zammad made up for an unnamed part matches
    any name mailgate made up; Zammad's U+FFFD (a byte it could not decode) stands for any
    one character."""
    if len(ours) != len(expected):
        return False
    unmatched = list(ours)
    # names the sender gave first, so a made-up one cannot take another's place
    for name in sorted(expected, key=lambda n: bool(_ZAMMAD_GENERATED.match(n))):
        pattern = re.compile(".".join(re.escape(p) for p in unicodedata.normalize("NFC", name).split("\ufffd")))
        hit = next((o for o in unmatched if pattern.fullmatch(unicodedata.normalize("NFC", o[0]))), None)
        if hit is None and _ZAMMAD_GENERATED.match(name):
            hit = next((o for o in unmatched if not o[1]), None)
        if hit is None:
            return False
        unmatched.remove(hit)
    return True


def _adjusted(raw: bytes, unique: str) -> bytes:
    """RAW with a Message-ID of its own and a domain for `@redacted` addresses."""
    raw = _REDACTED.sub(b"@redacted.example", raw)
    header = f"Message-ID: <{unique}@corpus.example>".encode()
    newline = b"\r\n" if b"\r\n" in raw[:2000] else b"\n"
    head_end = min((i for i in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if i >= 0), default=len(raw))
    match = _MESSAGE_ID.search(raw, 0, head_end + 1)
    if match:
        return raw[:match.start()] + header + newline + raw[match.end():]
    start = raw.find(b"\n") + 1 if raw.startswith(b"From ") else 0  # after an mbox separator
    return raw[:start] + header + newline + raw[start:]
