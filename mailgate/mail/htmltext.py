"""HTML → readable text, at a cost that stays linear in the size of the HTML.

inscriptis lays text out well (tables as columns, lists with bullets) but its cost per table
cell is high: a 228 KB table took 2.3 s and a 4 MB one 555 MB. So it gets the HTML of
ordinary mail; bigger or table-heavy HTML goes through a plain tag stripper that turns block
elements into line breaks — less pretty, same words, linear time and memory.
"""

from __future__ import annotations

import html
import logging
import re

from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

log = logging.getLogger(__name__)

MAX_LAYOUT_CHARS = 128 * 1024  # what inscriptis is given at most
MAX_LAYOUT_CELLS = 2000

# inscriptis' relaxed profile (spaces around inline elements, so words in adjacent spans do
# not run together) but without its indentation of every <div>: mail clients nest divs ten
# deep (Gmail, Outlook on the web), and each level pushed every line of the ticket two
# spaces further right.
_LAYOUT = ParserConfig(css={**CSS_PROFILES["relaxed"], "div": CSS_PROFILES["strict"]["div"]})

_CELL = re.compile(r"<t[dh][\s>]", re.I)
# Every pattern is bounded by the next "<" or by a length, so no match can scan the rest of
# the markup for each "<" in it.
_HIDDEN = re.compile(r"<(script|style|head|template)\b[^<>]{0,4000}>", re.I)
_BLOCK = re.compile(
    r"</?(?:p|div|br|tr|li|ul|ol|h[1-6]|table|blockquote|pre|hr|dd|dt|dl|section|article|header|"
    r"footer|address|center|form|title)\b[^<>]{0,4000}>", re.I)
_CELL_TAG = re.compile(r"</?t[dh]\b[^<>]{0,4000}>", re.I)
_TAG = re.compile(r"</?[a-zA-Z!?][^<>]{0,4000}>")
_BLANK_LINES = re.compile(r"\n{3,}")
_TITLE = re.compile(r"<title\b[^<>]{0,1000}>([^<]{0,1000})</title", re.I)


def to_text(markup: str) -> str:
    """The text of MARKUP, its title first (senders put words there that show)."""
    text = _layout(markup)
    title = _title(markup)
    if title and not "".join(text.split()).startswith("".join(title.split())):
        return f"{title}\n\n{text}"
    return text


def _title(markup: str) -> str:
    match = _TITLE.search(markup, 0, 64 * 1024)
    return " ".join(html.unescape(_TAG.sub("", match.group(1))).split()) if match else ""


def _layout(markup: str) -> str:
    if len(markup) <= MAX_LAYOUT_CHARS and len(_CELL.findall(markup, 0, MAX_LAYOUT_CHARS)) <= MAX_LAYOUT_CELLS:
        try:
            text = get_text(markup, _LAYOUT)
            if text.strip():
                return text
            # lxml stops at 256 levels of nesting and inscriptis then returns nothing
        except Exception:  # inscriptis on markup it cannot take: the plain way still gives the words
            log.warning("html layout failed; stripping tags instead")
    return strip_tags(markup)


def strip_tags(markup: str) -> str:
    """The text of MARKUP: tags dropped, block elements as line breaks, scripts, styles and
    comments left out, entities decoded."""
    text = _without_comments(_without_hidden(markup))
    text = _TAG.sub("", _CELL_TAG.sub(" ", _BLOCK.sub("\n", text)))
    lines = (" ".join(line.split()) for line in html.unescape(text).split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _without_hidden(markup: str) -> str:
    """MARKUP without the content of script, style and head elements."""
    kept, position = [], 0
    while (match := _HIDDEN.search(markup, position)) is not None:
        kept.append(markup[position:match.start()])
        position = _close(markup, match)
    kept.append(markup[position:])
    return "".join(kept)


def _without_comments(markup: str) -> str:
    kept, position = [], 0
    while (start := markup.find("<!--", position)) >= 0:
        kept.append(markup[position:start])
        end = markup.find("-->", start + 4)
        position = len(markup) if end < 0 else end + 3
    kept.append(markup[position:])
    return "".join(kept)


def _close(markup: str, match: re.Match) -> int:
    """Where the text after the element opened by MATCH resumes (its end tag, else the end)."""
    name = match.group(1).lower()
    ends = rf"</{name}\s*>|<body\b" if name == "head" else rf"</{name}\s*>"
    closing = re.compile(ends, re.I).search(markup, match.end())
    if closing is None:  # browsers end an unclosed head at the body; the rest is not head
        return match.end() if name == "head" else len(markup)
    return closing.end() if closing.group(0)[1] == "/" else closing.start()
