"""Organisational domains (RFC 7489 §3.2): the public suffix of a domain plus one label, from
the Public Suffix List as shipped inside the tldextract package — never fetched at run time.
The private section counts too (github.io, blogspot.com): two people's sites under one such
suffix are two organisations."""

from __future__ import annotations

from functools import lru_cache

import tldextract


@lru_cache(maxsize=1)
def _extract() -> tldextract.TLDExtract:
    # No cache directory and no list URLs: the snapshot bundled with the package, offline.
    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), include_psl_private_domains=True)


def normal(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


@lru_cache(maxsize=4096)
def organisational(domain: str) -> str | None:
    """DOMAIN's organisational domain; None when DOMAIN is itself a public suffix (or empty)."""
    domain = normal(domain)
    labels = [label for label in domain.split(".") if label]
    if not labels:
        return None
    parts = _extract()(domain)
    if parts.suffix:
        return f"{parts.domain}.{parts.suffix}" if parts.domain else None
    # A suffix the list does not know: its default rule "*" makes the last label the suffix.
    return ".".join(labels[-2:]) if len(labels) >= 2 else None


def same_organisation(a: str, b: str) -> bool:
    """Relaxed alignment: A and B have one organisational domain (and neither is a suffix)."""
    org = organisational(a)
    return org is not None and org == organisational(b)
