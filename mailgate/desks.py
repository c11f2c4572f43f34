"""The desks one gateway serves (SPEC §11): `[tickets]` is the default desk, `[[desks]]` add
more, each with its addresses, key prefix, sender and templates.

A message belongs to one desk: the desk of its first envelope recipient that is a desk's
address (or a `+tag` sub-address of one), else of the first such address in To or Cc (mail
without an envelope: `deliver` without `--recipient`, `explain`), else the default desk. A
message handed over for two desks' addresses at once (one SMTP or LMTP transaction) is
spooled once per desk by the listener (`split`), so each desk opens its own ticket; each
copy is de-duplicated per desk (see `dedupe_key`).

A ticket belongs to the desk it was opened at (`Ticket.desk`); a reply finds it by any
desk's key.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from mailgate import DEFAULT_LANGUAGE
from mailgate.config import DEFAULT_DESK, Config
from mailgate.mail.addresses import base_address, tag_of

COMMENT_TAG = "comment"  # local+comment@ of a desk's address: an agent's internal note


@dataclass(frozen=True)
class Desk:
    name: str
    addresses: tuple[str, ...]  # lower case; the first is where agents' reply addresses live
    key_prefix: str
    from_address: str
    display_name: str
    templates_dir: str  # "" for none: outbound.templates_dir, then the built-in ones
    language: str

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_DESK

    def dedupe_key(self, key: str) -> str:
        """A message's de-duplication key (SPEC §4.1) for this desk: the default desk's is the
        message's own, so records from before desks existed still match; another desk's is
        derived from it, so the copy of one message for each desk is processed once each."""
        return key if self.is_default else hashlib.sha256(f"desk:{self.name}\n{key}".encode()).hexdigest()


class Desks:
    """The desks of one config, looked up by name, address and key prefix."""

    def __init__(self, config: Config):
        self.default = Desk(
            name=DEFAULT_DESK, addresses=tuple(a.lower() for a in config.tickets.support_addresses),
            key_prefix=config.tickets.key_prefix, from_address=config.from_address,
            display_name=config.outbound.from_name, templates_dir="", language=DEFAULT_LANGUAGE,
        )
        self.all = (self.default, *(
            Desk(name=d.name, addresses=tuple(a.lower() for a in d.addresses), key_prefix=d.key_prefix,
                 from_address=d.from_address or d.addresses[0], display_name=d.display_name or config.outbound.from_name,
                 templates_dir=d.templates_dir, language=d.language)
            for d in config.desks))
        self._by_name = {d.name: d for d in self.all}
        self._by_address = {a: d for d in self.all for a in d.addresses}
        self._by_prefix = {d.key_prefix.upper(): d for d in self.all}
        self.prefixes = tuple(d.key_prefix for d in self.all)

    @property
    def several(self) -> bool:
        return len(self.all) > 1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def named(self, name: str | None) -> Desk | None:
        return self._by_name.get(name or "")

    def of_address(self, address: str | None) -> Desk | None:
        """The desk ADDRESS (or a +tag sub-address of it) belongs to, or None."""
        return self._by_address.get(base_address(address)) if address else None

    def of_message(self, recipients: list[str], header_addresses: list[str] = ()) -> Desk:
        """The desk of a message: its envelope recipients first, then its To and Cc."""
        for address in (*recipients, *header_addresses):
            if desk := self.of_address(address):
                return desk
        return self.default

    def of_ticket(self, ticket) -> Desk:
        """TICKET's desk; by its key's prefix, else the default, when its desk is no longer
        configured."""
        return (self._by_name.get(ticket.desk) or self._by_prefix.get(ticket.key.rpartition("-")[0].upper())
                or self.default)

    def split(self, recipients: list[str]) -> list[list[str]]:
        """RECIPIENTS of one transaction grouped by desk, in the order they came: one spool
        message per group. Addresses of no desk go with the first group."""
        groups: dict[str, list[str]] = {}
        for address in recipients:
            desk = self.of_address(address)
            groups.setdefault(desk.name if desk else "", []).append(address)
        if len(groups) <= 1:
            return [list(recipients)]
        strays = groups.pop("", [])
        ordered = list(groups.values())
        ordered[0] = ordered[0] + strays
        return ordered

    def is_comment_address(self, address: str) -> bool:
        """local+comment@ of a desk's address (SPEC §11: an agent's internal note)."""
        return tag_of(address) == COMMENT_TAG and self.of_address(address) is not None


@functools.lru_cache(maxsize=8)
def of(config: Config) -> Desks:
    """The desks of CONFIG (frozen, so they are worked out once per config)."""
    return Desks(config)
