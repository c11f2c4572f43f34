"""SPEC §8: /healthz answers 200 only while each mailbox fetches mail; a mailbox that does not
is a failing part named `imap.<name>` (before, mailboxes were reported and never judged, so a
refused login or a revoked OAuth2 token left /healthz at 200)."""

from __future__ import annotations

from types import SimpleNamespace

from mailgate.ingest.imap import FAILING_AFTER, MailboxState, Pollers


def _pollers(**boxes) -> Pollers:
    pollers = Pollers.__new__(Pollers)
    pollers.pollers = [SimpleNamespace(name=name, state=state, tokens=SimpleNamespace(health=oauth) if oauth else None)
                       for name, (state, oauth) in boxes.items()]
    return pollers


def test_a_mailbox_that_does_not_fetch_is_a_failing_part_and_the_others_are_not():
    pollers = _pollers(
        ok=(MailboxState(status="connected"), None),
        starting=(MailboxState(), None),
        blip=(MailboxState(status="disconnected", failures=FAILING_AFTER - 1, last_error="timed out"), None),
        down=(MailboxState(status="disconnected", failures=FAILING_AFTER, last_error="connection refused"), None),
        refused=(MailboxState(status="login failed", last_error="AUTHENTICATIONFAILED"), None),
        revoked=(MailboxState(status="login failed"), "refresh failed"),
        unsigned=(MailboxState(), "no token"),
        outage=(MailboxState(status="connected"), "unreachable"),  # the token in hand still works
    )
    assert pollers.problems() == {
        "down": "disconnected: connection refused",
        "refused": "login failed: AUTHENTICATIONFAILED",
        "revoked": "oauth: refresh failed: run `mailgate oauth login revoked`",
        "unsigned": "oauth: no token: run `mailgate oauth login unsigned`",
    }
