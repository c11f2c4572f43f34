"""Which addresses are ours: the support addresses and their `local+tag@domain` sub-addresses."""

from __future__ import annotations


def base_address(address: str) -> str:
    """ADDRESS without its +tag, in lower case."""
    local, at, domain = address.strip().strip("<>").lower().rpartition("@")
    if not at:
        return address.strip().lower()
    return f"{local.split('+', 1)[0]}@{domain}"


def tag_of(address: str) -> str:
    """The +tag of ADDRESS in lower case ("" without one): `support+comment@…` → "comment"."""
    local, at, _domain = address.strip().strip("<>").lower().rpartition("@")
    return local.partition("+")[2] if at else ""


def is_support_address(address: str, support: frozenset[str]) -> bool:
    return base_address(address) in support
