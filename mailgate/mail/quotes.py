"""The new text of a reply: quoted history and signature removed (SPEC §4.7), in time linear
in the size of the body.

A reply is read line by line. The first reply header ends what the sender wrote above it:
- the "On … wrote:" lines of every language mail-parser-reply knows (its own patterns,
  tried only on a window of three short lines that holds a word of such a line, and only
  so often per message — on a whole body they backtrack: 7.6 minutes for `x`, 60,000 CR
  LF, `x`), and Android's "---- X wrote ----";
- Outlook's header blocks ("From:" followed by "Sent:", "To:", "Subject:" … in the
  languages the library knows), indented, quoted or with `*bold*` field names, and the
  separator line above them;
- "-----Original Message-----" and its translations (Samsung's "-------- Original message
  --------" too).
Below a header, history quoted with `>` may be answered below or between the quotes: that
text is kept, and `>` lines are dropped wherever they are, with the attribution line that
introduces them even in a language nobody knows. History below a header that is not quoted
(Outlook) is all history. A forwarded message ("---------- Forwarded message ---------",
"Begin forwarded message:", an "Original-Nachricht" under a forward's subject) is never cut.
The signature (RFC 3676 "-- ", "Sent from my …", a lone "-Name") ends each piece of new text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from mailparser_reply.constants import MAIL_LANGUAGES

MAX_LINE = 300  # characters of a line that header patterns look at
MAX_EXAMINED = 128 * 1024  # characters of a body read line by line
MAX_LIBRARY_TRIES = 200  # windows handed to the library's patterns per message
WINDOW = 3  # lines a wrapped "On … wrote:" may take

# Words without which no "wrote" line of the library's languages can match (a cheap filter).
_WROTE_WORDS = re.compile(  # matched on lower-cased lines: faster than re.I
    r"wrote|schrieb|écrit|escribió|scritto|schreef|napisał|nadesłał|napsal|skrev|写道|작성|年|"
    r"írta|escreveu|пишет|написал|yazdı|kirjoitti|書きました|έγραψε")
# "wrote" lines of languages mail-parser-reply does not know (Hungarian, Portuguese, Russian,
# Turkish, Finnish, Greek) and the forms of Chinese and Japanese it misses ("雨州 <…> 在 …
# 写道：", Thunderbird's "… さんは書きました:"): the word ends the line, after the date and
# the name, or opens the line below them (wrapped). Each is linear on a window: no pattern
# backtracks over a line more than once.
_MORE_WROTE_WORDS = r"(?:ezt írta|escreveu|пишет|написал\(а\)|написал|написала|yazdı|kirjoitti|έγραψε|写道|書きました)"
_MORE_WROTE = (
    re.compile(rf"^(?:> ?)*(?=[^\n]{{0,250}}[@\d])[^\n]{{0,250}}?{_MORE_WROTE_WORDS}[^\n]{{0,80}}?[:：][ \t]*$",
               re.I | re.M),
    re.compile(rf"^(?:> ?)*(?=[^\n]{{0,250}}[@\d])[^\n]{{1,250}}\n(?:> ?)*{_MORE_WROTE_WORDS}[^\n]{{0,80}}?[:：][ \t]*$",
               re.I | re.M),
)
_FROM_FIELD = (r"From|Von|De|Da|Van|Od|Fra|Från|Expéditeur|Remitente|Mittente|Nadawca|Lähettäjä|От|发件人|"
               r"寄件者|差出人|보낸\s?사람|Feladó|Kimden|Από")
_OTHER_FIELD = (r"Sent|Date|To|Subject|Cc|Organization|Gesendet|Datum|An|Betreff|Organisation|Envoyé|À|Objet|"
                r"Enviado|Fecha|Para|Asunto|CC|Organización|Inviato|Data|A|Oggetto|Verzonden|Aan|Onderwerp|"
                r"Wysłano|Do|Temat|DW|Sendt|Til|Emne|Kopi|Skickat|Till|Ämne|Kopia|Odesláno|Komu|Předmět|Kopie|"
                r"Lähetetty|Vastaanottaja|Aihe|Отправлено|Кому|Тема|发送时间|收件人|主题|抄送|日期|"
                r"送信日時|宛先|件名|보낸\s?날짜|받는\s?사람|제목|참조|"
                r"Elküldve|Címzett|Tárgy|Dátum|Gönderildi|Gönderilme|Kime|Konu|Tarih|Enviada em|Assunto|"
                r"Προς|Θέμα|Ημερομηνία|Στάλθηκε")
_FIELD_LINE = r"^[>\s]*\*?\s*(?:{names})\s*\*?\s*:"
_FROM_LINE = re.compile(_FIELD_LINE.format(names=_FROM_FIELD), re.I)
_OTHER_LINE = re.compile(_FIELD_LINE.format(names=_OTHER_FIELD), re.I)
_ORIGINAL = (r"original message|original-nachricht|originalnachricht|ursprüngliche nachricht|message d'origine|"
             r"mensaje original|messaggio originale|oorspronkelijk bericht|oryginalna wiadomość|wiadomość oryginalna|"
             r"originalmeddelande|oprindelig meddelelse|původní zpráva|原始邮件|원본 메시지|元のメッセージ|"
             r"original email message|исходное сообщение")
_SEPARATOR = re.compile(rf"^[>\s]*-{{2,}}\s*(?:{_ORIGINAL})\s*-{{2,}}\s*$", re.I)
_RULE = re.compile(r"^[>\s]*(?:_{10,}|-{10,}|={10,})\s*$")
_UNDERSCORES = re.compile(r"^[>\s]*_{10,}\s*$")  # Outlook's rule, mailing-list footers
_ANDROID = re.compile(
    r"^[>\s]*-{2,}\s*.{1,200}?\s(?:wrote|schrieb|a écrit|escribió|ha scritto|schreef|napisał\(a\)|napsal\(a\)|skrev)"
    r"\s*-{2,}\s*$", re.I)
_FORWARD = re.compile(
    r"^[>\s]*(?:-{2,}\s*(?:forwarded message|weitergeleitete nachricht|message transféré|mensaje reenviado|"
    r"messaggio inoltrato|doorgestuurd bericht|przekazana wiadomość|videresendt meddelelse|"
    r"vidarebefordrat meddelande|přeposlaná zpráva|转发邮件|전달된 메시지|転送メッセージ|forwarded e-?mail)\s*-{2,}"
    r"|(?:begin forwarded message|anfang der weitergeleiteten nachricht|début du message réexpédié|"
    r"inicio del mensaje reenviado|inizio messaggio inoltrato|begin doorgestuurd bericht|"
    r"początek przekazanej wiadomości)\s*:)", re.I)
_FORWARD_SUBJECT = re.compile(r"^\s*(?:\[[^\]]{0,40}\]\s*)?(?:fwd?|fw|wg|tr|rv|i|vs|doorst|enc|reenv)\s*:", re.I)
_SENT_FROM = re.compile(
    r"^(?:sent from my|sent from outlook|get outlook for|gesendet von meinem|von meinem .{1,40} gesendet|"
    r"envoyé de mon|envoyé depuis|enviado desde mi|inviato da|verzonden vanaf mijn|wysłano z|skickat från min|"
    r"sendt fra min|odesláno z)\b[^,;:.!?]{0,60}$", re.I)
_SENT_FROM_FIRST = frozenset("sgveiwo")  # the first letters of _SENT_FROM's phrases
_SIGNATURE_NAME = re.compile(r"^-[A-ZÀ-Þ][\w.'’-]*(?: [A-ZÀ-Þ][\w.'’-]*){0,3}\s*$")
_ATTRIBUTION_HINT = re.compile(r"[@\d]")


@dataclass
class _Header:
    start: int  # first line of the header
    end: int  # first line after it


def new_text(body: str, subject: str = "") -> str:
    """The part of BODY the sender wrote now (SUBJECT tells a forward from a reply).

    Only the first MAX_EXAMINED characters are read line by line (a new text, and the
    header that ends it, come first); when no reply header and no quote is found there,
    the rest is kept as it is, else it is history like the rest of the quote."""
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    if len(body) <= MAX_EXAMINED:
        return _new_text(body, subject)[0]
    cut = body.rfind("\n", 0, MAX_EXAMINED) + 1 or MAX_EXAMINED
    text, history = _new_text(body[:cut], subject)
    return text if history else (text + "\n" + body[cut:]).strip()


def _wrote_flags(lines: list[str]) -> list[bool]:
    return [bool(_WROTE_WORDS.search(line[:MAX_LINE].lower())) for line in lines]


def _new_text(body: str, subject: str) -> tuple[str, bool]:
    """(the new text, whether any history was found: a reply header or a quote)."""
    lines = body.split("\n")
    budget = _Budget(wrote=_wrote_flags(lines))
    header = _first_header(lines, budget)
    forward = _first(lines, _FORWARD.match)
    if forward is not None and (header is None or forward <= header.start):
        return body.strip(), False  # a forward: the forwarded message is what the sender sends
    if header is not None and _FORWARD_SUBJECT.match(subject) and _SEPARATOR.match(lines[header.start]):
        return body.strip(), False  # "-------- Original-Nachricht --------" under "WG:" is a forward
    pieces = _pieces(lines, header, budget)
    text = "\n\n".join(p for p in (_without_signature(p).strip("\n") for p in pieces) if p.strip()).strip()
    return text, header is not None or any(_is_quoted(line) for line in lines)


@dataclass
class _Budget:
    """How many more windows the library's patterns may be tried on (per message), and
    which lines hold a word of a "wrote" line (looked for once per line)."""
    wrote: list[bool]
    tries: int = MAX_LIBRARY_TRIES


def _pieces(lines: list[str], header: _Header | None, budget: _Budget) -> list[list[str]]:
    """The runs of new text: all above the header; below it only text between and after
    `>` quotes (history that is not quoted is all history)."""
    if header is None:
        return _unquoted_runs(lines, 0, len(lines))
    above = _unquoted_runs(lines, 0, header.start)
    first = next((line for line in lines[header.end:header.end + 50] if line.strip()), "")
    if not _is_quoted(first):
        return above
    return above + _unquoted_runs(lines, header.end, len(lines), budget)


def _unquoted_runs(lines: list[str], start: int, end: int, budget: _Budget | None = None) -> list[list[str]]:
    """LINES without `>` quotes, split where a quote was; the line that introduces a quote
    ("… wrote:", in any language) goes with it. With a BUDGET, an unquoted reply header
    (older history in Outlook's style) ends the new text."""
    runs, current = [], []
    for i in range(start, end):
        line = lines[i]
        if _is_quoted(line):
            _drop_attribution(current)
            if current:
                runs.append(current)
            current = []
        elif budget is not None and _header_at(lines, i, budget) is not None:
            break  # unquoted history again (a nested Outlook block): the rest is history
        else:
            current.append(line)
    if current:
        runs.append(current)
    return runs


def _drop_attribution(lines: list[str]) -> None:
    """Remove the attribution paragraph at the end of LINES: up to three lines, the last
    ending with ":", with a date or an address in them, or a "wrote" word ("Marc wrote:",
    as Netscape, old Thunderbird and many list readers write it)."""
    while lines and not lines[-1].strip():
        lines.pop()
    paragraph = 0
    while paragraph < len(lines) and paragraph < WINDOW and lines[-1 - paragraph].strip():
        paragraph += 1
    text = " ".join(lines[len(lines) - paragraph:])
    hinted = _ATTRIBUTION_HINT.search(text) or _WROTE_WORDS.search(text.lower())
    if paragraph and text.rstrip().endswith(":") and hinted and len(text) < 3 * MAX_LINE:
        del lines[len(lines) - paragraph:]


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _first(lines: list[str], test) -> int | None:
    return next((i for i, line in enumerate(lines) if test(line[:MAX_LINE])), None)


# --- reply headers -------------------------------------------------------------------------


def _first_header(lines: list[str], budget: _Budget) -> _Header | None:
    for i in range(len(lines)):
        if _is_quoted(lines[i]):
            continue  # a header inside the quote belongs to older history
        header = _header_at(lines, i, budget)
        if header is not None:
            return header
    return None


def _header_at(lines: list[str], i: int, budget: _Budget) -> _Header | None:
    line = lines[i][:MAX_LINE]
    start = line.lstrip(" \t>")[:1]
    if not start:
        return None
    if start == "-" and (_SEPARATOR.match(line) or _ANDROID.match(line)):
        return _Header(i, _after_block(lines, i + 1))
    if ":" in line and _FROM_LINE.match(line) and _fields_follow(lines, i):
        return _Header(_separator_above(lines, i), _after_block(lines, i))
    if budget.tries > 0 and any(budget.wrote[i:i + WINDOW]):
        budget.tries -= 1
        taken = _wrote_header(lines, i)
        if taken:
            return _Header(i, i + taken)
    return None


def _fields_follow(lines: list[str], i: int) -> bool:
    """An Outlook block: another header field within the next three lines."""
    return any(_OTHER_LINE.match(line[:MAX_LINE]) for line in lines[i + 1:i + 4])


def _after_block(lines: list[str], i: int) -> int:
    """The first line after a block of header fields starting at I (fields may wrap)."""
    end = i
    while end < len(lines) and end - i < 12 and lines[end].strip() and not _is_quoted(lines[end]):
        end += 1
    return end


def _separator_above(lines: list[str], i: int) -> int:
    """Include the rule or "-----Original Message-----" line above an Outlook block."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j >= 0 and (_RULE.match(lines[j][:MAX_LINE]) or _SEPARATOR.match(lines[j][:MAX_LINE])):
        return j
    return i


def _wrote_header(lines: list[str], i: int) -> int:
    """How many lines from I an "On … wrote:" header of the library's languages takes; 0: none."""
    window = "\n".join(line[:MAX_LINE].strip() for line in lines[i:i + WINDOW])
    for pattern in _wrote_patterns():
        match = pattern.match(window)
        if match:
            return window.count("\n", 0, match.end()) + 1
    return 0


@lru_cache(maxsize=1)
def _wrote_patterns() -> tuple[re.Pattern, ...]:
    """The "wrote" header pattern of every language mail-parser-reply knows."""
    return tuple(re.compile(entry["wrote_header"], re.M | re.I)
                 for entry in MAIL_LANGUAGES.values() if entry.get("wrote_header")) + _MORE_WROTE


# --- signatures ----------------------------------------------------------------------------


def _without_signature(lines: list[str]) -> str:
    """The lines up to a signature — "-- " (RFC 3676; some clients drop its blank), a rule of
    underscores (mailing-list footers), "Sent from my …", a lone "-Name" line — without the
    separator lines a cut leaves at the end."""
    end = len(lines)
    for i, line in enumerate(lines):
        if _is_signature(line, first=i == 0):
            end = i
            break
    kept = lines[:end]
    while kept and (not kept[-1].strip() or _RULE.match(kept[-1][:MAX_LINE])):
        kept.pop()
    return "\n".join(kept)


def _is_signature(line: str, first: bool) -> bool:
    head = line.strip()[:MAX_LINE]
    if line.rstrip() == "--":
        return True
    if head[:1] == "_":
        return bool(_UNDERSCORES.match(head))
    if head[:1] == "-":
        return bool(_SEPARATOR.match(head)) or (not first and bool(_SIGNATURE_NAME.match(head)))
    return not first and len(head) <= 80 and head[:1].lower() in _SENT_FROM_FIRST and bool(_SENT_FROM.match(head))
