"""Notification mail from Jinja2 templates (SPEC §5): text and HTML, English and German.

Templates live in the repository's `templates/<language>/<event>.txt|.html`; an operator's
`[outbound] templates_dir` holding files of the same names overrides them one by one, and a
desk's `templates_dir` (SPEC §11) overrides both for the mail of its tickets. HTML is
autoescaped, so customer text (a summary, a comment) is shown, never interpreted.

Headers are built here, not in templates, and every value that goes into one passes
`header_text` (CR, LF, NUL and other control characters folded to spaces): no text from a
customer can add or alter a header.

The message is made with `email.mime` under the compat32 policy: it takes the values as we
give them instead of parsing each header back into objects as `EmailMessage` does, which cost
~1.5 ms per notification against ~0.4 ms here (measured; the bench README has the figures).
"""

from __future__ import annotations

import binascii
import email.charset
import email.policy
import email.utils
import functools
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from email.header import Header
from email.headerregistry import Address
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from pathlib import Path

import jinja2

import mailgate
from mailgate.config import Config
from mailgate.models import STATUSES, STATUSES_DE, TYPES, TYPES_DE

log = logging.getLogger("mailgate.notify")

DEFAULT_TEMPLATES = Path(mailgate.__file__).resolve().parent / "templates"
FALLBACK_LANGUAGE = "en"
NOTICE_LANGUAGES = ("en", "de")  # the unknown sender's language is unknown: both, in one mail
NOTICE_SUBJECT = "Your message to the service desk / Ihre Nachricht an den Service Desk"

_NAMES = {
    "en": {"status": STATUSES, "type": TYPES},
    "de": {"status": STATUSES_DE, "type": TYPES_DE},
}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_MESSAGE_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>$")  # printable ASCII, no < > or space


@dataclass
class Headers:
    """What a mail's headers say beyond the fixed ones; plain values, sanitised on use."""

    subject: str
    to_address: str
    to_name: str = ""
    message_id: str = ""
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    unsubscribe_url: str | None = None
    from_address: str | None = None  # None: the default desk's (outbound.from_address)
    from_name: str | None = None  # None: outbound.from_name
    reply_to: str | None = None  # an agent's signed reply address (SPEC §11)


@dataclass
class Rendered:
    subject: str
    message_id: str
    message: bytes


class Renderer:
    """The compiled templates (one Environment, cached) and the mail they make."""

    def __init__(self, config: Config):
        self.config = config
        self.reload()

    def reload(self) -> None:
        """Forget compiled templates, e.g. after an operator edited the override directory."""
        override = self.config.outbound.templates_dir
        self._defaults = _environment([])
        self._env = _environment([Path(override)]) if override else self._defaults
        self._desk_envs: dict[str, jinja2.Environment] = {}

    # --- mail ----------------------------------------------------------------------------

    def language(self, wanted: str | None, fallback: str = FALLBACK_LANGUAGE) -> str:
        """WANTED when mailgate speaks it (templates and display names), else FALLBACK (a
        desk's language), else English."""
        if wanted in _NAMES:
            return wanted
        return fallback if fallback in _NAMES else FALLBACK_LANGUAGE

    def mail(self, template: str, languages: tuple[str, ...], context: dict, headers: Headers, now: datetime,
             templates_dir: str = "") -> Rendered:
        """Render TEMPLATE (an event name) in LANGUAGES, one after another, into a message;
        TEMPLATES_DIR: a desk's overrides."""
        env = self._environment_of(templates_dir)
        text = "\n\n-----\n\n".join(self._render(f"{lang}/{template}.txt", lang, context, env) for lang in languages)
        html = "\n<hr>\n".join(self._render(f"{lang}/{template}.html", lang, context, env) for lang in languages)
        message = _compose(self._header_lines(headers, now), text, _html_document(html, languages[0]),
                           ", ".join(languages))
        return Rendered(header_text(headers.subject), headers.message_id, message)

    def warm_up(self) -> None:
        """Compile every built-in template now, so the first notification does not pay for it
        inside its transaction (which, on SQLite, holds the write lock)."""
        for env in {id(e): e for e in (self._env, self._defaults)}.values():
            for name in env.list_templates(filter_func=lambda n: n.endswith((".txt", ".html"))):
                try:
                    env.get_template(name)
                except jinja2.TemplateError:
                    pass  # a broken override is reported (and replaced) when it is used

    def page(self, name: str, language: str, context: dict) -> str:
        """An HTML page of the notification links (autoescaped like the mail)."""
        return self._render(f"{language}/{name}.html", language, context)

    # --- helpers -------------------------------------------------------------------------

    def _environment_of(self, templates_dir: str) -> jinja2.Environment:
        """The templates of a desk: its directory, then outbound.templates_dir, then ours."""
        if not templates_dir:
            return self._env
        if templates_dir not in self._desk_envs:
            override = self.config.outbound.templates_dir
            self._desk_envs[templates_dir] = _environment([Path(d) for d in (templates_dir, override) if d])
        return self._desk_envs[templates_dir]

    def _render(self, name: str, language: str, context: dict, env: jinja2.Environment | None = None) -> str:
        context = {**context, "lang": language}
        env = env or self._env
        try:
            return env.get_template(name).render(context)
        except jinja2.TemplateError as e:
            if env is self._env and not self.config.outbound.templates_dir:
                raise
            # A broken override must not stop tickets from being created: say so, use ours.
            log.error("template %s from an override directory failed (%s); using the built-in one", name, e)
            return self._defaults.get_template(name).render(context)

    def _header_lines(self, headers: Headers, now: datetime) -> list[tuple[str, str | Header | _Unfolded]]:
        cfg = self.config
        if not is_safe_message_id(headers.message_id):
            raise ValueError(f"unsafe Message-ID {headers.message_id!r}")
        from_name = cfg.outbound.from_name if headers.from_name is None else headers.from_name
        lines = [
            ("From", _address(header_text(from_name), headers.from_address or cfg.from_address)),
            ("To", _address(header_text(headers.to_name), headers.to_address)),
            ("Subject", _unstructured(header_text(headers.subject))),
            ("Date", email.utils.format_datetime(now)),
            ("Message-ID", headers.message_id),
        ]
        references = [r for r in dict.fromkeys(headers.references) if is_safe_message_id(r)]
        if headers.reply_to:
            lines.append(("Reply-To", _address(header_text(from_name), headers.reply_to)))
        if headers.in_reply_to and is_safe_message_id(headers.in_reply_to):
            lines.append(("In-Reply-To", headers.in_reply_to))
        if references:
            lines.append(("References", " ".join(references)))
        lines.append(("Auto-Submitted", "auto-generated"))
        lines.append(("X-Auto-Response-Suppress", "All"))
        if headers.unsubscribe_url and headers.unsubscribe_url.isascii():
            # One literal <URL> on the header's line: a client reads nothing else as a link.
            lines.append(("List-Unsubscribe", _Unfolded(f"<{header_text(headers.unsubscribe_url, 900)}>")))
            lines.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        return lines


def header_text(value: str | None, limit: int = 400) -> str:
    """VALUE as one line of header text: control characters (CR, LF, NUL, …) become spaces."""
    return " ".join(_UNSAFE.sub(" ", value or "").split())[:limit]


def is_safe_message_id(value: str) -> bool:
    """Only well-formed, printable Message-IDs are copied into In-Reply-To/References."""
    return bool(_MESSAGE_ID.match(value or ""))


def is_mailable_address(address: str | None) -> bool:
    """An address we may put into To and RCPT TO (a customer-supplied From might be anything)."""
    if not address or len(address) > 254 or not address.isascii() or _UNSAFE.search(address):
        return False
    try:
        parsed = Address(addr_spec=address)
    except Exception:  # the email package raises several kinds for a bad addr-spec
        return False
    return parsed.addr_spec == address and "." in parsed.domain


class _CompiledTemplates(jinja2.BytecodeCache):
    """The compiled code of every template this process has compiled, shared by all its
    Environments: a reload (SIGHUP), another desk's Environment or another App in the same
    process compiles only what changed. Jinja keys it by template name and file and checks a
    checksum of the source, so an edited template is compiled anew."""

    def __init__(self):
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if (code := self._code.get(bucket.key)) is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_COMPILED = _CompiledTemplates()  # every Environment below has the same settings, so they may share it


def _environment(overrides: list[Path]) -> jinja2.Environment:
    loader = jinja2.ChoiceLoader([*(jinja2.FileSystemLoader(str(p)) for p in overrides),
                                  jinja2.FileSystemLoader(str(DEFAULT_TEMPLATES))])
    env = jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, bytecode_cache=_COMPILED,
    )
    env.filters["status_name"] = _display("status")
    env.filters["type_name"] = _display("type")
    return env


def _display(kind: str):
    @jinja2.pass_context
    def name(context, slug: str | None) -> str:
        names = _NAMES.get(context.get("lang"), _NAMES[FALLBACK_LANGUAGE])[kind]
        return names.get(slug or "", slug or "")

    return name


# --- MIME composition ------------------------------------------------------------------

class _Output(email.policy.Compat32):
    """compat32 that writes a short one-line ASCII header as it is: folding every header again
    (Header.encode) was two thirds of a notification's cost, and such a line needs none."""

    def fold_binary(self, name: str, value) -> bytes:
        if isinstance(value, str) and len(name) + len(value) < 77 and value.isascii() and value.isprintable():
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_OUTPUT = _Output(linesep="\r\n")
_UTF8 = email.charset.Charset("utf-8")  # header words and display names


def _compose(headers: list[tuple[str, str | Header | _Unfolded]], text: str, html: str, language: str) -> bytes:
    """A multipart/alternative message (text, then HTML) as CRLF bytes, ready for SMTP."""
    # Our own boundary: the generator would otherwise compile a new regex per mail to check a
    # random one against the text. "=" never occurs unencoded in a quoted-printable body.
    msg = MIMEMultipart("alternative", boundary="==" + secrets.token_hex(16) + "==")
    for name, value in headers:
        msg[name] = value
    msg["Content-Language"] = language
    msg.attach(_quoted_printable("plain", text))
    msg.attach(_quoted_printable("html", html))
    return msg.as_bytes(policy=_OUTPUT)


def _quoted_printable(subtype: str, text: str) -> MIMENonMultipart:
    """A UTF-8 text part, quoted-printable (readable in the raw mail, unlike base64), encoded by
    binascii in C: the email package's own encoder (MIMEText with a QP charset) works line by
    line in Python and cost half of a notification's composition."""
    part = MIMENonMultipart("text", subtype, charset="utf-8")
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii"))
    return part


class _Unfolded:
    """A header value written exactly as it is: compat32 asks a value that is not a str to
    encode itself. Only for values header_text made one line of printable ASCII."""

    def __init__(self, value: str):
        self.value = value

    def __str__(self) -> str:
        return self.value

    def encode(self, linesep: str = "\r\n", maxlinelen: int = 0) -> str:
        return self.value


def _unstructured(value: str) -> str | Header:
    """VALUE (one line, see header_text) as header text: RFC 2047 encoded when it is not plain
    ASCII or could be read as an encoded word — but only from the first word that needs it,
    so the leading `[SD-42]` tag stays plain ASCII outside any encoded word, where mail
    filters and people searching for `[SD-` find it (SPEC §5)."""
    if value.isascii() and "=?" not in value:
        return value
    words = value.split(" ")
    plain = 0
    while plain < len(words) and words[plain].isascii() and "=?" not in words[plain]:
        plain += 1
    if not plain:
        return Header(value, _UTF8)
    header = Header(" ".join(words[:plain]), "us-ascii")
    header.append(" ".join(words[plain:]), _UTF8)  # the space between the two is kept
    return header


@functools.lru_cache(maxsize=8192)
def _address(name: str, addr_spec: str) -> str:
    """NAME <ADDR-SPEC>, the name quoted or encoded as it needs."""
    return email.utils.formataddr((name, addr_spec), charset=_UTF8)


def _html_document(body: str, language: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="{language}">\n<head><meta charset="utf-8"></head>\n'
            f'<body style="font-family: sans-serif; line-height: 1.4">\n{body}\n</body>\n</html>\n')
