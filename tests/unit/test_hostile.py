"""Hostile mail (issue 13) through `parse()` and `quotes.new_text()`, and through the pipeline:
each shape of tests/hostile.py within a measured budget of time and of memory (a small
multiple of the message size). The one place where timing belongs in the tests: these are
the bounds the gateway promises. Sizes are a fraction of the campaign's
(bench/hostile.py) so the whole module takes a few seconds.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest
from sqlmodel import select

from mailgate.ingest import pipe
from mailgate.mail import quotes
from mailgate.mail.parse import UnparseableMessage, parse
from mailgate.models import Inbound
from tests import hostile
from tests.support import SUPPORT

SECONDS = 3.0  # per message, on a shared CI machine; each case takes well under one here
MEMORY_FACTOR = 16  # peak traced memory, as a multiple of the message size …
MEMORY_FLOOR = 8 * 1024 * 1024  # … but never less than this (tiny messages, fixed costs)

SIZES = {
    "newlines": 30_000, "spaces": 30_000, "quote markers": 20_000, "wrote lines": 10_000,
    "header fields": 10_000, "deep nesting": 3_000, "nested attachments": 30_000, "many parts": 3_000,
    "boundary traps": 20_000, "deep comments": 3_000, "encoded words": 5_000, "huge html": 15_000,
    "broken html": 400_000, "tnef property count": 0, "tnef value count": 0, "tnef rows": 0,
    "tnef objects": 20_000, "long header": 90_000, "iso-2022-jp junk": 250_000, "part header": 300_000,
}
# What each shape must come to: parsed, or refused by a limit (quarantined) — never an error.
REFUSED = {"deep nesting", "many parts", "part header"}


def _measured(work):
    """(result, seconds, peak traced bytes): timed untraced, then run again under tracemalloc
    (which slows Python-level loops several times over) for the peak."""
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    tracemalloc.start()
    try:
        work()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, seconds, peak


def _read(raw: bytes):
    try:
        parsed = parse(raw)
    except UnparseableMessage as e:
        return str(e)
    return parsed, quotes.new_text(parsed.text, parsed.subject)


@pytest.mark.parametrize("shape", list(hostile.SHAPES))
def test_hostile_shape_is_read_within_its_budget(shape):
    raw = hostile.SHAPES[shape](SIZES[shape])
    result, seconds, peak = _measured(lambda: _read(raw))
    assert seconds < SECONDS, f"{shape}: {seconds:.2f} s"
    assert peak < max(MEMORY_FLOOR, MEMORY_FACTOR * len(raw)), f"{shape}: {peak / 1e6:.1f} MB for {len(raw) / 1e6:.2f} MB"
    if shape in REFUSED:
        assert isinstance(result, str) and result.startswith("limit: "), result
    else:
        assert not isinstance(result, str), result


def test_deep_comments_in_an_address_header_are_read_not_recursed_into():
    parsed = parse(hostile.deep_comments(3_000))
    assert parsed.to == ["support@example.com"] and parsed.text == "body"


def test_tnef_that_claims_more_than_it_holds_is_kept_as_it_is(caplog):
    for make in (hostile.tnef_property_count, hostile.tnef_value_count, hostile.tnef_rows):
        parsed = parse(make())
        assert [a.filename for a in parsed.attachments] == ["winmail.dat"]
    assert len(caplog.records) <= 3  # one line per broken winmail.dat, not one per claimed property


def test_a_reply_of_newlines_leaves_its_text_and_takes_no_time():
    text = "x" + "\n" * 60_000 + "x"
    result, seconds, _ = _measured(lambda: quotes.new_text(text))
    assert result.startswith("x") and result.endswith("x") and seconds < SECONDS


@pytest.mark.parametrize("shape", ["deep comments", "tnef property count", "nested attachments", "newlines",
                                   "deep nesting", "huge html"])
def test_hostile_mail_through_the_pipeline_gets_a_record_and_an_outcome(world_app, shape):
    raw = hostile.SHAPES[shape](SIZES[shape])
    started = time.perf_counter()
    delivery = pipe.deliver(world_app, raw, "alice@acme.example", SUPPORT)
    seconds = time.perf_counter() - started
    assert delivery.exit_code == 0 and seconds < 2 * SECONDS, (delivery, seconds)
    expected = "quarantined" if shape in REFUSED else ("comment_added" if b"[SD-1]" in raw else "ticket_created")
    assert delivery.result.outcome == expected, delivery.result
    with world_app.db.session() as s:
        inbound = s.exec(select(Inbound).order_by(Inbound.id.desc())).first()
    assert inbound.outcome == expected and inbound.message_id is not None


def test_attachments_over_the_decoded_limit_are_refused_before_they_are_decoded():
    """`max_decoded_bytes` is checked against each part's encoded size before the part is
    decoded: the copies it would make never exist."""
    from email.message import EmailMessage

    from mailgate.mail.parse import Limits

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "alice@acme.example", SUPPORT, "Three files"
    message["Message-ID"] = "<three-files@acme.example>"
    message.set_content("See the files.")
    for n in range(3):
        message.add_attachment(bytes([n]) * 1_000_000, maintype="application", subtype="octet-stream",
                               filename=f"file{n}.bin")
    raw = message.as_bytes()
    limits = Limits(max_decoded_bytes=1_500_000)  # the first file fits, the second does not
    result, seconds, peak = _measured(lambda: _refusal(raw, limits))
    assert result.startswith("limit: more than 1500000 bytes"), result
    # One file decoded (1 MB) and the second refused unread: far below the 3 MB of decoded
    # files and their copies that a check after decoding would have held.
    assert seconds < SECONDS and peak < 2_500_000, (seconds, peak)


def _refusal(raw: bytes, limits) -> str:
    with pytest.raises(UnparseableMessage) as refused:
        parse(raw, limits)
    return str(refused.value)


def test_a_recursion_error_deep_in_a_library_is_an_unparseable_message():
    """Whatever a library raises on hostile bytes, RecursionError included, parse() turns into
    UnparseableMessage, which the pipeline quarantines with its record (the test above)."""
    import inspect
    import sys

    raw = hostile.SHAPES["nested attachments"](50)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + 30)  # deep enough for the test, not for the parse
    try:
        with pytest.raises(UnparseableMessage, match="RecursionError"):
            parse(raw)
    finally:
        sys.setrecursionlimit(limit)
