"""Realistic test mail: customers of several organisations, new tickets and replies.

Everything is deterministic for a given seed. A message is about 2 KB (the headers a mail
that went through two MTAs carries: Received, DKIM-Signature, Authentication-Results, ...;
a plain-text or multipart/alternative body); a share of them carries a 50 KB PDF-like
attachment. Replies quote the mail they answer and carry a signature, as mail clients do;
they find their ticket by "[SD-n]" in the subject (a reply to a notification, In-Reply-To
the notification's Message-ID) or, without a key, only by In-Reply-To/References (a
colleague answering the customer's original mail).
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

from bench.common import SUPPORT

FIRST = ["Anna", "Ben", "Clara", "David", "Eva", "Felix", "Greta", "Hannah", "Ivan", "Julia", "Karl", "Lena",
         "Marco", "Nina", "Oskar", "Paula", "Quentin", "Rosa", "Stefan", "Tara", "Uwe", "Vera", "Walter", "Yara"]
LAST = ["Adams", "Becker", "Clarke", "Dietrich", "Evans", "Fischer", "Graham", "Hoffmann", "Irwin", "Jung",
        "Klein", "Lewis", "Maier", "Nolan", "Otto", "Parker", "Quinn", "Richter", "Schmidt", "Turner", "Ulrich",
        "Vogel", "Wagner", "Young", "Zimmermann"]

SUBJECTS_EN = [
    "Printer on the 3rd floor prints blank pages", "VPN drops every few minutes", "Cannot log in to the portal",
    "Invoice export fails with error 500", "Request: new user account for our trainee",
    "Nightly backup job did not run", "Slow response times in the order module", "License key expired",
    "E-mail notifications arrive twice", "Report shows wrong totals for March", "Please reset my password",
    "Question about the upcoming release", "Data import stops at 80 %", "Scanner not recognised after update",
    "Access rights for the finance share",
]
SUBJECTS_DE = [
    "Drucker im 2. OG druckt nur leere Seiten", "VPN bricht ständig ab", "Anmeldung am Portal nicht möglich",
    "Rechnungsexport bricht mit Fehler 500 ab", "Bitte neues Benutzerkonto für unsere Auszubildende",
    "Nächtliche Datensicherung ist nicht gelaufen", "Lange Antwortzeiten im Bestellmodul",
    "Lizenzschlüssel abgelaufen", "Auswertung zeigt falsche Summen für März", "Passwort zurücksetzen, bitte",
    "Frage zum kommenden Release", "Datenimport bleibt bei 80 % stehen",
]
SENTENCES_EN = [
    "Since this morning the problem occurs for all colleagues in our department.",
    "We already restarted the affected machines, but that did not help.",
    "The error message says that the service is temporarily unavailable.",
    "It worked fine until the update that was installed last Thursday evening.",
    "Could you please have a look at it as soon as possible, as we have a deadline on Friday?",
    "I attached a screenshot of the error and the log file from the application server.",
    "The problem can be reproduced by opening the monthly report and pressing export.",
    "Our IT department checked the network connection and found nothing unusual.",
    "About twenty users are affected, so this is rather urgent for us.",
    "Please let me know if you need any further information or remote access.",
    "We use version 4.2.1 of the client on Windows 11 workstations.",
    "The same happens on the test system, so it does not seem to depend on the data.",
]
SENTENCES_DE = [
    "Seit heute Morgen tritt das Problem bei allen Kolleginnen und Kollegen unserer Abteilung auf.",
    "Wir haben die betroffenen Rechner bereits neu gestartet, leider ohne Erfolg.",
    "Die Fehlermeldung besagt, dass der Dienst vorübergehend nicht verfügbar ist.",
    "Bis zum Update am vergangenen Donnerstagabend hat alles einwandfrei funktioniert.",
    "Könnten Sie sich das bitte möglichst bald ansehen? Wir haben am Freitag eine Frist.",
    "Einen Screenshot der Fehlermeldung und die Logdatei des Servers habe ich angehängt.",
    "Der Fehler lässt sich nachstellen, indem man den Monatsbericht öffnet und Export wählt.",
    "Unsere IT hat die Netzwerkverbindung geprüft und nichts Auffälliges gefunden.",
    "Etwa zwanzig Benutzer sind betroffen, daher ist es für uns recht dringend.",
    "Bitte melden Sie sich, falls Sie weitere Informationen oder einen Fernzugang benötigen.",
]
REPLIES_EN = ["Thank you, the workaround helps for now.", "Unfortunately the problem is back since this morning.",
              "Here is the additional information you asked for.", "We tested the fix, it works on two of three machines."]
REPLIES_DE = ["Vielen Dank, der Workaround hilft erst einmal.", "Leider ist das Problem seit heute früh wieder da.",
              "Anbei die gewünschten zusätzlichen Informationen.", "Wir haben die Korrektur getestet, sie wirkt auf zwei von drei Rechnern."]
CLOSE_EN, CLOSE_DE = "Please close the ticket.", "Bitte schließen."
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass(frozen=True)
class Contact:
    index: int
    email: str
    name: str
    org: int
    org_name: str
    language: str


class Directory:
    """ORGS organisations with PER_ORG contacts each; every fourth organisation speaks German."""

    def __init__(self, orgs: int, per_org: int):
        self.orgs, self.per_org = orgs, per_org
        self.contacts = [self._contact(o, j) for o in range(orgs) for j in range(per_org)]

    @staticmethod
    def org_name(o: int) -> str:
        return f"Customer {o:05d} {'GmbH' if o % 4 == 0 else 'Ltd'}"

    def _contact(self, o: int, j: int) -> Contact:
        first, last = FIRST[(o * 7 + j) % len(FIRST)], LAST[(o * 11 + j * 3) % len(LAST)]
        email = f"{first}.{last}.{j}@customer{o:05d}.example".lower()
        return Contact(o * self.per_org + j, email, f"{first} {last}", o, self.org_name(o), "de" if o % 4 == 0 else "en")

    def colleague(self, rng: random.Random, contact: Contact) -> Contact:
        if self.per_org < 2:
            return contact
        j = rng.randrange(self.per_org - 1)
        j = j if j < contact.index % self.per_org else j + 1
        return self.contacts[contact.org * self.per_org + j]

    def csv(self) -> str:
        lines = ["email,name,organisation,language"]
        lines += [f"{c.email},{c.name},{c.org_name},{c.language}" for c in self.contacts]
        return "\n".join(lines) + "\n"


@dataclass
class TicketRef:
    """What a customer knows of an existing ticket: enough to reply to it."""

    key: str
    summary: str
    creator: Contact
    thread_id: str  # the Message-ID of the customer's original mail
    notification_id: str | None = None  # a Message-ID of mailgate's mail about it, if known
    status: str = "opened"


@dataclass
class Mail:
    kind: str  # new, reply_key, reply_thread
    sender: str
    recipients: list[str]
    raw: bytes
    attachment: bool = False
    subject: str = ""
    message_id: str = ""
    extra: dict = field(default_factory=dict)


class Generator:
    def __init__(self, directory: Directory, seed: int = 8, run: str = "r"):
        self.dir = directory
        self.rng = random.Random(seed)
        self.run = run  # makes Message-IDs unique between runs on one database
        self.serial = 0
        self.clock = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)

    # --- whole messages --------------------------------------------------------------------

    def new_ticket(self, sender: Contact | None = None, attachment: bool = False, subject: str | None = None,
                   attachment_bytes: int = 51200) -> Mail:
        rng = self.rng
        sender = sender or rng.choice(self.dir.contacts)
        de = sender.language == "de"
        subject = subject or self._subject(de)
        cc = self.dir.colleague(rng, sender) if rng.random() < 0.15 else None
        text = self._paragraphs(de, rng.randint(2, 4))
        text += "\n\n" + self._signature(sender)
        msgid = self._msgid(sender)
        raw = self._message(sender, subject, text, msgid, cc=cc, attachment_bytes=attachment_bytes if attachment else 0)
        return Mail("new", sender.email, [SUPPORT], raw, attachment, subject, msgid)

    def reply(self, ticket: TicketRef, by_key: bool, attachment: bool = False, sender: Contact | None = None,
              close: bool = False) -> Mail:
        """A reply to TICKET from its creator (mostly) or a colleague of the same organisation."""
        rng = self.rng
        if sender is None:
            sender = ticket.creator if rng.random() < 0.7 else self.dir.colleague(rng, ticket.creator)
        de = sender.language == "de"
        first = (CLOSE_DE if de else CLOSE_EN) if close else rng.choice(REPLIES_DE if de else REPLIES_EN)
        text = first + "\n\n" + self._paragraphs(de, rng.randint(1, 2)) + "\n\n" + self._signature(sender)
        when = format_datetime(self.clock - timedelta(days=1))
        if by_key:  # answering mailgate's notification: its subject carries the key
            subject = f"{'AW' if de else 'Re'}: [{ticket.key}] {ticket.summary}"
            parent = ticket.notification_id or ticket.thread_id
            quoted_from = "Service Desk <support@example.com>"
        else:  # answering the customer's original mail (reply-all): no key anywhere
            subject = f"{'AW' if de else 'Re'}: {ticket.summary}"
            parent = ticket.thread_id
            quoted_from = f"{ticket.creator.name} <{ticket.creator.email}>"
        header = f"Am {when} schrieb {quoted_from}:" if de else f"On {when}, {quoted_from} wrote:"
        quoted = "\n".join("> " + line for line in self._paragraphs(de, 3).splitlines())
        text += f"\n\n{header}\n{quoted}\n"
        references = [ticket.thread_id] + ([parent] if parent != ticket.thread_id else [])
        msgid = self._msgid(sender)
        raw = self._message(sender, subject, text, msgid, in_reply_to=parent, references=references,
                            attachment_bytes=51200 if attachment else 0)
        return Mail("reply_key" if by_key else "reply_thread", sender.email, [SUPPORT], raw, attachment, subject, msgid,
                    {"ticket": ticket.key})

    def mix(self, count: int, tickets: list[TicketRef], reply_share: float = 0.3, attachment_share: float = 0.1) -> list[Mail]:
        """COUNT messages: new tickets and replies to TICKETS (two thirds by key, one third by
        thread), ATTACHMENT_SHARE of them with a 50 KB attachment."""
        # The structure (which message is what, which ticket a reply is about) comes from a
        # generator of its own, so it is the same whatever the texts consumed.
        structure = random.Random(self.rng.getrandbits(64))
        mails = []
        for _ in range(count):
            attachment = structure.random() < attachment_share
            if tickets and structure.random() < reply_share:
                ticket = tickets[structure.randrange(len(tickets))]
                mails.append(self.reply(ticket, by_key=structure.random() < 2 / 3, attachment=attachment))
            else:
                mails.append(self.new_ticket(attachment=attachment))
        return mails

    # --- parts ------------------------------------------------------------------------------

    def _subject(self, de: bool) -> str:
        base = self.rng.choice(SUBJECTS_DE if de else SUBJECTS_EN)
        r = self.rng.random()
        if r < 0.3:
            return f"{base} ({'Auftrag' if de else 'order'} {self.rng.randint(10000, 99999)})"
        if r < 0.4:
            return f"{'WG' if de else 'Fwd'}: {base}"
        return base

    def _paragraphs(self, de: bool, sentences: int) -> str:
        pool = SENTENCES_DE if de else SENTENCES_EN
        picked = self.rng.sample(pool, min(sentences, len(pool)))
        greeting = "Hallo zusammen," if de else "Hello,"
        return greeting + "\n\n" + _wrap(" ".join(picked))

    def _signature(self, c: Contact) -> str:
        phone = f"+49 30 {self.rng.randint(1000000, 9999999)}" if c.language == "de" else f"+44 20 {self.rng.randint(1000, 9999)} {self.rng.randint(1000, 9999)}"
        return f"{'Viele Grüße' if c.language == 'de' else 'Best regards'}\n{c.name}\n\n-- \n{c.name}\n{c.org_name}\nPhone {phone}"

    def _msgid(self, c: Contact) -> str:
        self.serial += 1
        return f"<{self.run}.{self.serial}.{self.rng.getrandbits(40):010x}@mail.customer{c.org:05d}.example>"

    def _message(self, sender: Contact, subject: str, text: str, msgid: str, *, cc: Contact | None = None,
                 in_reply_to: str | None = None, references: list[str] | None = None, attachment_bytes: int = 0) -> bytes:
        rng = self.rng
        self.clock += timedelta(seconds=rng.randint(1, 90))
        date = format_datetime(self.clock)
        domain = sender.email.rsplit("@", 1)[1]
        ip = f"198.51.100.{rng.randint(2, 250)}"
        qid = "".join(rng.choice("0123456789ABCDEF") for _ in range(10))
        bh = "".join(rng.choice(B64) for _ in range(43)) + "="
        sig = "".join(rng.choice(B64) for _ in range(342)) + "=="
        sig_folded = "\r\n\t ".join(sig[i:i + 72] for i in range(0, len(sig), 72))
        boundary = f"=_{rng.getrandbits(64):016x}"
        headers = [
            f"Return-Path: <{sender.email}>",
            f"Received: from mail.{domain} (mail.{domain} [{ip}])\r\n\tby mx1.example.com (Postfix) with ESMTPS id {qid}\r\n\tfor <{SUPPORT}>; {date}",
            f"Received: from [10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(2, 250)}] (unknown [10.0.0.1])\r\n\tby mail.{domain} (Postfix) with ESMTPSA id {qid[::-1]};\r\n\t{date}",
            f"Authentication-Results: mx1.example.com;\r\n\tdkim=pass header.d={domain} header.s=sel1 header.b={sig[:8]};\r\n\tspf=pass smtp.mailfrom={sender.email};\r\n\tdmarc=pass (p=none) header.from={domain}",
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=sel1;\r\n\tt={int(self.clock.timestamp())}; bh={bh};\r\n\th=From:To:Subject:Date:Message-ID:MIME-Version:Content-Type;\r\n\tb={sig_folded}",
            f"Message-ID: {msgid}",
            f"Date: {date}",
            f"From: {_display(sender.name)} <{sender.email}>",
            f"To: Service Desk <{SUPPORT}>",
        ]
        if cc:
            headers.append(f"Cc: {_display(cc.name)} <{cc.email}>")
        headers.append(f"Subject: {_encode_subject(subject)}")
        if in_reply_to:
            headers.append(f"In-Reply-To: {in_reply_to}")
            headers.append("References: " + "\r\n ".join(references or [in_reply_to]))
        headers += [
            "MIME-Version: 1.0",
            f"User-Agent: {rng.choice(['Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0', 'Microsoft Outlook 16.0', 'Apple Mail (2.3774.300.61.1.2)'])}",
            f"Content-Language: {'de-DE' if sender.language == 'de' else 'en-GB'}",
        ]
        plain = _part_text(text)
        html_alt = rng.random() < 0.4
        if html_alt:
            body_part = (
                f'Content-Type: multipart/alternative; boundary="{boundary}a"\r\n\r\n'
                f"--{boundary}a\r\n{plain}\r\n--{boundary}a\r\n{_part_html(text)}\r\n--{boundary}a--\r\n"
            )
        else:
            body_part = plain
        if attachment_bytes:
            data = b"%PDF-1.7\n" + rng.randbytes(max(0, attachment_bytes - 9))
            blob = base64.encodebytes(data).replace(b"\n", b"\r\n").decode()
            name = f"{'Fehlerbericht' if sender.language == 'de' else 'error-report'}-{rng.randint(100, 999)}.pdf"
            headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}m"')
            body = (
                "This is a multi-part message in MIME format.\r\n\r\n"
                f"--{boundary}m\r\n{body_part}\r\n--{boundary}m\r\n"
                f'Content-Type: application/pdf; name="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
                f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{blob}\r\n--{boundary}m--\r\n'
            )
            return ("\r\n".join(headers) + "\r\n" + body).encode()
        head_lines, _, rest = body_part.partition("\r\n\r\n")
        # a single part: its Content-* headers are the message's own
        return ("\r\n".join(headers) + "\r\n" + head_lines + "\r\n\r\n" + rest).encode()


def _wrap(text: str, width: int = 72) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return "\n".join(lines)


def _display(name: str) -> str:
    return f'"{name}"'


def _encode_subject(subject: str) -> str:
    if subject.isascii():
        return subject
    return "=?UTF-8?B?" + base64.b64encode(subject.encode()).decode() + "?="


def _part_text(text: str) -> str:
    body = text.replace("\n", "\r\n")
    return f"Content-Type: text/plain; charset=UTF-8; format=flowed\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"


def _part_html(text: str) -> str:
    import html

    paras = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in text.split("\n\n"))
    return ('Content-Type: text/html; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
            f'<html><head><meta charset="utf-8"></head><body style="font-family:Calibri,sans-serif">{paras}</body></html>\r\n')


def big_attachment_mail(gen: Generator, sender: Contact, size: int) -> Mail:
    """One new ticket carrying an attachment of SIZE bytes."""
    return gen.new_ticket(sender=sender, attachment=True, subject="Full database dump for analysis",
                          attachment_bytes=size)
