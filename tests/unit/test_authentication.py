"""require_authenticated_sender (SPEC §4.4): only the trusted MTA's Authentication-Results
count, and they must show DMARC pass or a DKIM pass aligned with the From domain."""

import json

import pytest

from tests.support import make_message

TRUSTED = "mx.example.com"


@pytest.fixture
def strict(make_config, cli):
    config = make_config("strict.toml", policy={"require_authenticated_sender": True, "trusted_authserv_id": TRUSTED})
    run = lambda *a, **k: cli(*a, config=config, **k)  # noqa: E731
    assert run("org", "add", "Acme")[0] == 0
    assert run("contact", "add", "alice@acme.example", "--name", "Alice", "--org", "Acme")[0] == 0
    return run


@pytest.mark.parametrize("results, outcome", [
    ([f"{TRUSTED}; dmarc=pass (p=reject) header.from=acme.example"], "ticket_created"),
    ([f"{TRUSTED}; dkim=pass header.d=acme.example header.s=s1; dmarc=none"], "ticket_created"),
    ([f"{TRUSTED}; dkim=pass header.d=mail.acme.example"], "ticket_created"),
    ([f"{TRUSTED}; dkim=pass header.d=evil.example; spf=pass smtp.mailfrom=acme.example"], "rejected_unauthenticated"),
    ([f"{TRUSTED}; spf=pass smtp.mailfrom=acme.example"], "rejected_unauthenticated"),
    ([f"{TRUSTED}; dmarc=fail header.from=acme.example"], "rejected_unauthenticated"),
    (["attacker.example; dmarc=pass header.from=acme.example"], "rejected_unauthenticated"),
    ([f"{TRUSTED}; dmarc=pass header.from=other.example"], "rejected_unauthenticated"),
    ([f"{TRUSTED}; this is ; not = a header"], "rejected_unauthenticated"),
    ([], "rejected_unauthenticated"),
    (["attacker.example; dmarc=fail", f"{TRUSTED}; dmarc=pass header.from=acme.example"], "ticket_created"),
])
def test_authentication_results(strict, results, outcome):
    raw = make_message(extra_headers={"Authentication-Results": results[0]} if len(results) == 1 else None)
    if len(results) > 1:
        head, body = raw.split(b"\r\n\r\n", 1)
        raw = head + b"".join(f"\r\nAuthentication-Results: {r}".encode() for r in results) + b"\r\n\r\n" + body
    code, out, _ = strict("deliver", "--json", stdin=raw)
    assert code == 0 and json.loads(out)["outcome"] == outcome


@pytest.mark.parametrize("sender, results, outcome", [
    # DMARC must name the From domain it passed for
    ("alice@acme.example", f"{TRUSTED}; dmarc=pass (p=reject)", "rejected_unauthenticated"),
    ("alice@acme.example", f"{TRUSTED}; dmarc=pass header.from=mail.acme.example", "rejected_unauthenticated"),
    ("alice@acme.example", f"{TRUSTED}; dmarc=pass header.from=ACME.example", "ticket_created"),
    # a DKIM signature of a public suffix, or of another organisation under one, is not aligned
    ("alice@acme.example", f"{TRUSTED}; dkim=pass header.d=example", "rejected_unauthenticated"),
    ("carol@shop.co.uk", f"{TRUSTED}; dkim=pass header.d=co.uk", "rejected_unauthenticated"),
    ("carol@shop.co.uk", f"{TRUSTED}; dkim=pass header.d=mail.shop.co.uk", "ticket_created"),
    ("carol@shop.co.uk", f"{TRUSTED}; dkim=pass header.d=other.co.uk", "rejected_unauthenticated"),
    ("bob@acme.github.io", f"{TRUSTED}; dkim=pass header.d=github.io", "rejected_unauthenticated"),
    ("bob@acme.github.io", f"{TRUSTED}; dkim=pass header.d=mallory.github.io", "rejected_unauthenticated"),
    ("bob@acme.github.io", f"{TRUSTED}; dkim=pass header.d=acme.github.io", "ticket_created"),
    ("dora@x.city.kawasaki.jp", f"{TRUSTED}; dkim=pass header.d=kawasaki.jp", "rejected_unauthenticated"),
    ("dora@x.city.kawasaki.jp", f"{TRUSTED}; dkim=pass header.d=city.kawasaki.jp", "ticket_created"),
])
def test_alignment_by_organisational_domain(strict, sender, results, outcome):
    """Relaxed alignment is the same organisational domain, from the public suffix list."""
    if sender != "alice@acme.example":
        assert strict("contact", "add", sender, "--name", "Someone", "--org", "Acme")[0] == 0
    raw = make_message(sender=sender, extra_headers={"Authentication-Results": results})
    code, out, _ = strict("deliver", "--json", stdin=raw)
    assert code == 0 and json.loads(out)["outcome"] == outcome


def test_the_public_suffix_list_needs_no_network():
    """The list ships with the package: asking works with every socket refused."""
    import socket

    from mailgate.mail import domains

    domains.organisational.cache_clear()
    domains._extract.cache_clear()
    real = socket.socket.connect
    socket.socket.connect = lambda *a, **k: (_ for _ in ()).throw(OSError("no network in this test"))
    try:
        assert domains.organisational("a.b.shop.co.uk") == "shop.co.uk"
        assert domains.organisational("co.uk") is None
    finally:
        socket.socket.connect = real


def test_off_by_default(cli):
    cli("org", "add", "Acme")
    cli("contact", "add", "alice@acme.example", "--name", "Alice", "--org", "Acme")
    code, out, _ = cli("deliver", "--json", stdin=make_message())
    assert json.loads(out)["outcome"] == "ticket_created"
