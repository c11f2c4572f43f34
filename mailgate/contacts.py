"""Organisations and contacts: who may open tickets (SPEC §2, guide §2.1)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, select

from mailgate.models import Contact, Organisation

LANGUAGES = ("en", "de")


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


def add_contact(session: Session, email: str, name: str, org_name: str, language: str = "en") -> Contact:
    email = normalise_email(email)
    if find_contact(session, email) is not None:
        raise ContactsError(f"contact {email!r} exists already")
    if not name.strip():
        raise ContactsError("contact name is empty")
    org = organisation(session, org_name)
    row = Contact(email=email, name=name.strip(), organisation_id=org.id, language=check_language(language))
    session.add(row)
    session.flush()
    return row


def disable_contact(session: Session, email: str) -> Contact:
    row = contact(session, email)
    row.active = False
    session.add(row)
    return row


# --- CSV import ----------------------------------------------------------------------------


@dataclass
class ImportReport:
    created: list[int] = field(default_factory=list)  # line numbers
    updated: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def import_contacts(session: Session, path: Path, progress=None) -> ImportReport:
    """Create or update contacts from CSV (email,name,organisation,language[,active]).

    Missing organisations are created; running it twice changes nothing the second time.
    """
    report = ImportReport()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"email", "name", "organisation", "language"} - set(reader.fieldnames or [])
        if missing:
            raise ContactsError(f"{path}: missing columns: {', '.join(sorted(missing))}")
        for row in reader:
            line = reader.line_num
            try:
                with session.begin_nested():
                    state = _import_row(session, row)
            except ContactsError as e:
                report.rejected.append((line, str(e)))
                continue
            getattr(report, state).append(line)
            if progress and line % 1000 == 0:
                progress(line)
    return report


def _import_row(session: Session, row: dict) -> str:
    email = normalise_email(row.get("email") or "")
    name = (row.get("name") or "").strip()
    org_name = (row.get("organisation") or "").strip()
    language = check_language((row.get("language") or "en").strip() or "en")
    active = _active(row.get("active"))
    if not name or not org_name:
        raise ContactsError("name and organisation are required")
    org = find_organisation(session, org_name) or add_organisation(session, org_name)
    existing = find_contact(session, email)
    if existing is None:
        session.add(Contact(email=email, name=name, organisation_id=org.id, language=language, active=active))
        session.flush()
        return "created"
    wanted = dict(name=name, organisation_id=org.id, language=language, active=active)
    if all(getattr(existing, k) == v for k, v in wanted.items()):
        return "unchanged"
    for k, v in wanted.items():
        setattr(existing, k, v)
    session.add(existing)
    session.flush()
    return "updated"


def _active(value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in ("", "1", "true", "yes", "y", "active"):
        return True
    if text in ("0", "false", "no", "n", "inactive"):
        return False
    raise ContactsError(f"active must be true or false, not {value!r}")
