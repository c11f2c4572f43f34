"""Organisations and contacts: who may open tickets (SPEC §2, guide §2.1)."""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import charset_normalizer
from sqlmodel import Session, func, select

from mailgate import DEFAULT_LANGUAGE, LANGUAGES
from mailgate.models import Contact, Organisation



class ContactsError(ValueError):
    """A name, address or value the directory cannot take; the message says which."""


def add_organisation(session: Session, name: str, region: str | None = None) -> Organisation:
    name = name.strip()
    if not name:
        raise ContactsError("organisation name is empty")
    if find_organisation(session, name) is not None:
        raise ContactsError(f"organisation {name!r} exists already")
    org = Organisation(name=name, region=region or None)
    session.add(org)
    session.flush()
    return org


def find_organisation(session: Session, name: str) -> Organisation | None:
    return session.exec(select(Organisation).where(Organisation.name == name.strip())).first()


def organisation(session: Session, name: str) -> Organisation:
    org = find_organisation(session, name)
    if org is None:
        raise ContactsError(f"no organisation {name!r}")
    return org


def normalise_email(address: str) -> str:
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not (local and at and "." in domain) or any(c.isspace() or c in "<>,;\"" for c in address):
        raise ContactsError(f"{address!r} is not an e-mail address")
    return address


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ContactsError(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    return language


def find_contact(session: Session, email: str) -> Contact | None:
    return session.exec(select(Contact).where(Contact.email == email.strip().lower())).first()


def contact(session: Session, email: str) -> Contact:
    found = find_contact(session, email)
    if found is None:
        raise ContactsError(f"no contact {email.strip().lower()!r}")
    return found


def add_contact(session: Session, email: str, name: str, org_name: str, language: str | None = None) -> Contact:
    """A new contact; LANGUAGE None: none given, they are mailed in the desk's language ("")."""
    email = normalise_email(email)
    if find_contact(session, email) is not None:
        raise ContactsError(f"contact {email!r} exists already")
    if not name.strip():
        raise ContactsError("contact name is empty")
    org = organisation(session, org_name)
    row = Contact(email=email, name=name.strip(), organisation_id=org.id,
                  language=check_language(language) if language else "")
    session.add(row)
    session.flush()
    return row


def disable_contact(session: Session, email: str) -> Contact:
    row = contact(session, email)
    row.active = False
    session.add(row)
    return row


# --- listing and changing ------------------------------------------------------------------


def organisation_rows(session: Session) -> list[dict]:
    """SPEC §9 `org list`: [{"name", "region", "contacts"}], by name."""
    counts = dict(session.exec(
        select(Contact.organisation_id, func.count()).group_by(Contact.organisation_id)).all())
    return [{"name": o.name, "region": o.region, "contacts": counts.get(o.id, 0)}
            for o in session.exec(select(Organisation).order_by(Organisation.name))]


def contact_rows(session: Session, org_name: str | None = None) -> list[dict]:
    """SPEC §9 `contact list`: [{"email", "name", "organisation", "language", "active"}]; a
    contact who gave no language shows the default desk's, "en" (other desks mail them in
    theirs)."""
    query = select(Contact, Organisation.name).join(Organisation, Organisation.id == Contact.organisation_id)
    if org_name is not None:
        query = query.where(Contact.organisation_id == organisation(session, org_name).id)
    return [{"email": c.email, "name": c.name, "organisation": org, "language": c.language or DEFAULT_LANGUAGE,
             "active": c.active}
            for c, org in session.exec(query.order_by(Contact.email))]


def set_region(session: Session, name: str, region: str) -> Organisation:
    """The region whose agents see the organisation's confidential tickets ("" for none)."""
    org = organisation(session, name)
    org.region = region.strip() or None
    session.add(org)
    return org


# --- CSV import ----------------------------------------------------------------------------

COLUMNS = ("email", "name", "organisation", "language")  # and, optionally, active
DELIMITERS = ",;\t"
PROGRESS_EVERY = 1000  # rows between two progress lines on stderr


@dataclass
class ImportReport:
    created: list[int] = field(default_factory=list)  # line numbers
    updated: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    encoding: str = ""  # what the file was read as
    delimiter: str = ""


def import_contacts(session: Session, path: Path, create_orgs: bool = False, progress=None) -> ImportReport:
    """Create or update contacts from CSV (email,name,organisation,language[,active]) in any
    common encoding and with `,` `;` or tab between the fields (a German Excel writes
    Windows-1252 and semicolons). A row naming an unknown organisation is rejected unless
    CREATE_ORGS; running it twice changes nothing the second time."""
    text, encoding = _decode(path.read_bytes())
    delimiter = _delimiter(text)
    report = ImportReport(encoding=encoding, delimiter=delimiter)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    reader.fieldnames = [(f or "").strip().lower() for f in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in reader.fieldnames]
    if missing:
        raise ContactsError(f"{path}: missing columns: {', '.join(missing)} (found: {', '.join(reader.fieldnames)}; "
                            f"read as {encoding} with delimiter {delimiter!r})")
    directory = _Directory(session, create_orgs)
    for rows, row in enumerate(reader, 1):
        line = reader.line_num
        try:
            state = directory.take(row, line)
        except ContactsError as e:
            report.rejected.append((line, str(e)))
        else:
            getattr(report, state).append(line)
        if rows % PROGRESS_EVERY == 0:
            session.flush()
            if progress:
                progress(rows)
    session.flush()
    return report


def _decode(data: bytes) -> tuple[str, str]:
    """The file's text and the encoding it was read as: UTF-8 (with or without BOM) when it
    decodes as such, else what charset-normalizer finds (cp1252, latin-1, UTF-16 …) — or
    Windows-1252 where that guess, from too few bytes, reads worse (`_windows_1252_rather`)."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    best = charset_normalizer.from_bytes(data[:1_000_000]).best()
    if best is None:
        raise ContactsError("cannot tell the file's encoding; save it as UTF-8")
    text = data.decode(best.encoding, errors="replace").lstrip("\ufeff")
    if _windows_1252_rather(data, text):
        return data.decode("cp1252"), "cp1252"
    return text, best.encoding


# Non-letters that Windows-1252 text of names and organisations holds beside letters.
_NAME_MARKS = set(" '’‘-–—.,&()/\"\u00a0+@_;:!?#°„“”´`") | set("0123456789")


def _windows_1252_rather(data: bytes, guessed: str) -> bool:
    """Whether DATA is better read as Windows-1252, what Excel writes for "CSV" on a Western
    Windows, than as what charset-normalizer GUESSED from a few bytes: a short file with one
    "Müller" may read as a DOS code page ("M³ller"), "Muñoz" as Central European ("Muńoz").
    Yes when Windows-1252 reads names (letters, digits, their marks) and the guess reads
    something else, or other Latin letters; a guess in another script (Cyrillic, Greek, …)
    stays, as does one where Windows-1252 reads no names (Polish "Łukasz": "£ukasz")."""
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        return False  # bytes Windows-1252 does not define
    if western == guessed:
        return True
    return _clean(western) and (not _clean(guessed) or _latin_only(guessed))


def _latin_only(text: str) -> bool:
    """Whether every letter of TEXT beyond ASCII is a Latin one."""
    return all(unicodedata.name(c, "").startswith("LATIN") for c in set(text) if not c.isascii() and c.isalpha())


def _clean(text: str) -> bool:
    """Only letters, digits, blanks and the marks of names, addresses and CSV: no control
    characters (UTF-16 read byte by byte is full of NULs)."""
    return all((c.isascii() and c.isprintable()) or c.isalpha() or c in _NAME_MARKS or c in "\r\n\t"
               for c in set(text))


def _delimiter(text: str) -> str:
    """`,` `;` or tab, as csv.Sniffer sees the first lines; else the one the header has most of."""
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        header = sample.partition("\n")[0]
        return max(DELIMITERS, key=header.count)


class _Directory:
    """The organisations and contacts, loaded once for an import: a row is checked and applied
    in memory (one query per file, not per row) and flushed in batches."""

    def __init__(self, session: Session, create_orgs: bool):
        self.session, self.create_orgs = session, create_orgs
        self.orgs = {o.name: o for o in session.exec(select(Organisation))}
        self.contacts = {c.email: c for c in session.exec(select(Contact))}
        self.lines: dict[str, int] = {}  # the line each address of the file was taken from

    def take(self, row: dict, line: int) -> str:
        """Apply one CSV row (at LINE): "created", "updated" or "unchanged"; ContactsError to
        reject it. An address the file had on an earlier line is rejected: the file says two
        things of one contact, and taking both would change it back and forth on every run."""
        email = normalise_email(row.get("email") or "")
        if email in self.lines:
            raise ContactsError(f"{email} is on line {self.lines[email]} already")
        name = (row.get("name") or "").strip()
        org_name = (row.get("organisation") or "").strip()
        language = (row.get("language") or "").strip().lower()  # "": none, the desk's
        if language:
            check_language(language)
        active = _active(row.get("active"))
        if not name or not org_name:
            raise ContactsError("name and organisation are required")
        if len(name) > 200 or len(org_name) > 200:
            raise ContactsError("a name is longer than 200 characters")
        wanted = dict(name=name, organisation_id=self._organisation(org_name).id, language=language, active=active)
        self.lines[email] = line
        existing = self.contacts.get(email)
        if existing is None:
            self.contacts[email] = Contact(email=email, **wanted)
            self.session.add(self.contacts[email])
            return "created"
        if all(getattr(existing, k) == v for k, v in wanted.items()):
            return "unchanged"
        for k, v in wanted.items():
            setattr(existing, k, v)
        self.session.add(existing)
        return "updated"

    def _organisation(self, name: str) -> Organisation:
        if name not in self.orgs:
            if not self.create_orgs:
                raise ContactsError(f"no organisation {name!r} (add it with `mailgate org add`, or import "
                                    "with --create-orgs)")
            self.orgs[name] = add_organisation(self.session, name)
        return self.orgs[name]


def _active(value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in ("", "1", "true", "yes", "y", "active", "ja", "j", "wahr"):
        return True
    if text in ("0", "false", "no", "n", "inactive", "nein", "falsch"):
        return False
    raise ContactsError(f"active must be true or false, not {value!r}")
