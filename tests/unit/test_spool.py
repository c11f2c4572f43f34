"""mailgate.core.spool.Spool on a real directory: the durable hand-over between receiving and processing."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from mailgate.core.spool import Disposition, Envelope, Spool, SpoolError, read_file

RAW = b"From: alice@acme.example\r\nSubject: hello\r\n\r\nbody line\r\n"


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool")
    s.ensure()
    return s


def files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_put_waiting_claim_done(spool):
    spool_id = spool.put(RAW, Envelope(sender="alice@acme.example", recipients=["support@example.com"]))
    assert spool.waiting() == [spool_id]
    assert files(spool.tmp) == [] and files(spool.cur) == []
    assert spool.depth() == 1

    claim = spool.claim(spool_id)
    assert claim is not None
    assert claim.spool_id == spool_id and claim.path == spool.cur / spool_id
    assert claim.raw == RAW
    assert spool.waiting() == [] and files(spool.cur) == [spool_id]
    assert spool.depth() == 1

    spool.settle(claim, Disposition.DONE)
    assert files(spool.new) == [] and files(spool.cur) == [] and files(spool.tmp) == []
    assert spool.depth() == 0


def test_waiting_is_in_arrival_order(spool):
    ids = [spool.put(RAW + str(i).encode(), Envelope(sender="a@b.example", recipients=[])) for i in range(5)]
    assert spool.waiting() == ids


def test_has_older_sees_waiting_and_claimed_mail_that_arrived_earlier(spool):
    first, second = (spool.put(RAW, Envelope(sender="a@b.example", recipients=[])) for _ in range(2))
    assert spool.has_older(second) and not spool.has_older(first)
    claim = spool.claim(first)  # being worked still counts
    assert spool.has_older(second)
    spool.settle(claim, Disposition.DONE)
    assert not spool.has_older(second)


def test_a_death_is_counted_and_the_message_put_back(spool):
    spool_id = spool.put(RAW, Envelope(sender="a@b.example", recipients=[]))
    claim = spool.claim(spool_id)
    assert not spool.note_death(spool_id)  # held by a live claimer: not orphaned
    claim.close()  # its process died: the lock is gone, the file still in cur/
    assert spool.note_death(spool_id) and spool.waiting() == [spool_id]
    again = spool.claim(spool_id)
    assert (again.envelope.deaths, again.envelope.attempts, again.raw) == (1, 0, RAW)


def test_two_claims_of_one_message_only_one_wins(spool):
    spool_id = spool.put(RAW, Envelope(sender="a@b.example", recipients=[]))
    first = spool.claim(spool_id)
    second = spool.claim(spool_id)
    assert first is not None
    assert second is None
    spool.settle(first, Disposition.DONE)
    assert spool.claim(spool_id) is None  # gone for good


def test_claim_of_a_locked_file_still_in_new_loses(spool):
    """A claimer that opened the file first and holds the lock wins, even before it renamed it."""
    import fcntl

    spool_id = spool.put(RAW, Envelope(sender="a@b.example", recipients=[]))
    with open(spool.new / spool_id, "rb") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert spool.claim(spool_id) is None
    assert spool.waiting() == [spool_id]


def test_release_counts_attempts(spool):
    spool_id = spool.put(RAW, Envelope(sender="a@b.example", recipients=["support@example.com"]))
    claim = spool.claim(spool_id)
    spool.settle(claim, Disposition.RETRY)
    assert spool.waiting() == [spool_id] and files(spool.cur) == [] and files(spool.tmp) == []
    claim = spool.claim(spool_id)
    assert claim.envelope.attempts == 1
    assert claim.raw == RAW
    spool.settle(claim, Disposition.RETRY)
    claim = spool.claim(spool_id)
    assert claim.envelope.attempts == 2
    spool.settle(claim, Disposition.WAIT)
    claim = spool.claim(spool_id)
    assert claim.envelope.attempts == 2
    assert claim.envelope.recipients == ["support@example.com"]
    spool.settle(claim, Disposition.DONE)


def test_recover_returns_orphans_and_leaves_held_claims(spool):
    orphan_id = spool.put(RAW + b"orphan", Envelope(sender="a@b.example", recipients=[]))
    held_id = spool.put(RAW + b"held", Envelope(sender="a@b.example", recipients=[]))
    orphan = spool.claim(orphan_id)
    held = spool.claim(held_id)
    orphan.close()  # its processor died: the file stays in cur/, nobody holds the lock

    assert spool.recover() == 1
    assert spool.waiting() == [orphan_id]
    assert files(spool.cur) == [held_id]
    envelope, raw = read_file(spool.new / orphan_id)
    assert envelope.attempts == 1
    assert raw == RAW + b"orphan"

    assert spool.recover() == 0  # the held claim is still held
    assert files(spool.cur) == [held_id]
    spool.settle(held, Disposition.DONE)
    assert files(spool.cur) == []


def test_recover_skips_young_files(spool):
    spool_id = spool.put(RAW, Envelope(sender="a@b.example", recipients=[]))
    spool.claim(spool_id).close()
    assert spool.recover(min_age=3600) == 0
    assert files(spool.cur) == [spool_id]
    assert spool.recover(min_age=0) == 1
    assert spool.waiting() == [spool_id]


def test_put_claimed_is_held_in_cur(spool):
    claim = spool.put_claimed(RAW, Envelope(sender="a@b.example", recipients=["support@example.com"], source="pipe"))
    assert files(spool.cur) == [claim.spool_id]
    assert spool.waiting() == [] and files(spool.tmp) == []
    assert claim.raw == RAW and claim.envelope.source == "pipe"
    assert spool.recover() == 0  # held: not an orphan
    assert files(spool.cur) == [claim.spool_id]
    spool.settle(claim, Disposition.DONE)
    assert files(spool.cur) == []


def test_put_claimed_orphan_is_recovered(spool):
    claim = spool.put_claimed(RAW, Envelope(sender="a@b.example", recipients=[], source="pipe"))
    claim.close()  # the deliver process died
    assert spool.recover() == 1
    assert spool.waiting() == [claim.spool_id]


def test_file_and_envelope_round_trip(spool):
    raw = b"Subject: x\r\n\r\nfirst\nsecond\r\n\x00\xff binary\n"
    envelope = Envelope(sender="", recipients=["support@example.com", "support+billing@example.com"], source="lmtp")
    spool_id = spool.put(raw, envelope)
    read_envelope, read_raw = read_file(spool.new / spool_id)
    assert read_raw == raw
    assert read_envelope == envelope
    assert read_envelope.sender == ""  # the null sender stays distinct from "unknown"
    head = (spool.new / spool_id).read_bytes().split(b"\n", 1)[0]
    assert json.loads(head)["sender"] == ""

    unknown = spool.put(raw, Envelope(sender=None, recipients=[]))
    assert read_file(spool.new / unknown)[0].sender is None
    claim = spool.claim(spool_id)
    assert claim.envelope == envelope and claim.raw == raw


def test_spool_error_when_tmp_is_not_a_directory(spool):
    shutil.rmtree(spool.tmp)
    spool.tmp.write_bytes(b"not a directory")
    with pytest.raises(SpoolError):
        spool.put(RAW, Envelope(sender="a@b.example", recipients=[]))
    with pytest.raises(SpoolError):
        spool.put_claimed(RAW, Envelope(sender="a@b.example", recipients=[]))
    assert spool.waiting() == [] and files(spool.cur) == []
    with pytest.raises(SpoolError, match="cannot write spool/tmp"):
        spool.probe()
    spool.tmp.unlink()
    spool.ensure()
    spool.probe()
    assert files(spool.new) == [] and files(spool.tmp) == []
    spool_id = spool.put(RAW, Envelope(sender="a@b.example", recipients=[]))
    assert spool.waiting() == [spool_id]


def test_spool_error_when_new_is_missing(spool):
    """The rename into new/ fails: SpoolError, and nothing is left behind in tmp/."""
    shutil.rmtree(spool.new)
    with pytest.raises(SpoolError):
        spool.put(RAW, Envelope(sender="a@b.example", recipients=[]))
    assert files(spool.tmp) == []


def test_an_unreadable_file_is_set_aside_not_claimed(spool):
    (spool.new / "00000000000000000001-garbage").write_bytes(b"this is no envelope\r\nSubject: x\r\n\r\nhi\r\n")
    good = spool.put(RAW, Envelope(sender="a@b.example", recipients=[]))
    assert spool.waiting() == ["00000000000000000001-garbage", good]
    assert spool.claim("00000000000000000001-garbage") is None
    assert files(spool.root / "bad") == ["00000000000000000001-garbage"]
    assert spool.waiting() == [good] and files(spool.cur) == []
    claim = spool.claim(good)
    assert claim.raw == RAW
    spool.settle(claim, Disposition.DONE)


def test_recover_sets_aside_an_unreadable_file_in_cur(spool):
    (spool.cur / "00000000000000000002-garbage").write_bytes(b'{"sender": 1, "nonsense": true}\n')
    spool_id = spool.put(RAW, Envelope(sender="a@b.example", recipients=[]))
    spool.claim(spool_id).close()
    assert spool.recover() == 1
    assert spool.waiting() == [spool_id]
    assert files(spool.root / "bad") == ["00000000000000000002-garbage"]
    assert files(spool.cur) == []


def test_recover_removes_stale_tmp_files_only(spool):
    stale, fresh = spool.tmp / "stale-write", spool.tmp / "fresh-write"
    stale.write_bytes(b"half a message from a writer that was killed")
    fresh.write_bytes(b"a writer at work")
    two_hours_ago = os.stat(stale).st_mtime - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert spool.recover() == 0
    assert files(spool.tmp) == ["fresh-write"]
