"""What becomes of a claimed message: one Disposition decided by Runner.handle, applied by
Spool.settle — the runner's loop run once on real spool files and a real database, with
failpoints standing in for a poison message, a database outage and a broken store."""

from __future__ import annotations

import pytest
from sqlmodel import select

from mailgate import failpoints
from mailgate.core.runner import MAX_DEATHS, MAX_DEFERRALS, Runner
from mailgate.core.spool import Disposition, Envelope, read_file
from mailgate.ingest import pipe
from mailgate.models import Inbound, Ticket
from tests.support import SUPPORT, make_message, spool_files


@pytest.fixture
def runner(people_app):
    yield Runner(people_app)
    failpoints.configure("")


@pytest.fixture
def spool_one(people_app):
    """spool_one(raw=..., **envelope) → the spool id of a message put into new/."""

    def put(raw: bytes | None = None, **envelope) -> str:
        envelope = {"sender": "alice@acme.example", "recipients": [SUPPORT], **envelope}
        return people_app.spool.put(raw or make_message(), Envelope(**envelope))

    return put


def _inbound(app) -> list[Inbound]:
    with app.db.read_session() as s:
        return list(s.exec(select(Inbound).order_by(Inbound.id)))


def test_a_processed_message_is_done_and_its_file_gone(runner, spool_one):
    spool_one()
    (spool_id, handled), = runner.run_once()
    assert handled.disposition is Disposition.DONE and handled.result.outcome == "ticket_created"
    assert spool_files(runner.app.config.state_dir) == {"tmp": [], "new": [], "cur": []}


def test_a_poison_message_is_retried_then_quarantined_and_the_next_one_goes_on(runner, spool_one):
    failpoints.configure("pipeline=raise:POISON")
    poison = spool_one(make_message(subject="POISON pill"))
    spool_one(make_message(subject="An honest question"))
    dispositions = []
    for _ in range(runner.app.config.processing.max_attempts):
        dispositions += [(i == poison, h.disposition) for i, h in runner.run_once()]
    assert dispositions[:2] == [(True, Disposition.RETRY), (False, Disposition.DONE)]
    assert dispositions[2:] == [(True, Disposition.RETRY), (True, Disposition.DONE)]
    quarantined, created = sorted(_inbound(runner.app), key=lambda i: i.outcome)
    assert (quarantined.outcome, created.outcome) == ("quarantined", "ticket_created")
    assert "FailpointError" in quarantined.error and quarantined.attempts == 3
    assert spool_files(runner.app.config.state_dir)["new"] == []


def test_a_message_whose_worker_died_too_often_is_quarantined_unparsed(runner, spool_one):
    spool_id = spool_one(deaths=MAX_DEATHS)
    (_, handled), = runner.run_once()
    assert handled.disposition is Disposition.DONE and handled.result.outcome == "quarantined"
    record, = _inbound(runner.app)
    assert record.from_address is None  # not parsed: parsing may be what kills the worker
    assert f"died {MAX_DEATHS} times" in record.error


def test_a_death_is_counted_and_the_message_goes_back(runner, spool_one):
    spool_id = spool_one()
    claim = runner.spool.claim(spool_id)
    claim.close()  # the worker holding it died: nobody holds the lock any more
    assert runner.spool.note_death(spool_id)
    envelope, _ = read_file(runner.spool.new / spool_id)
    assert (envelope.deaths, envelope.attempts) == (1, 0)


def test_a_database_outage_puts_the_message_back_uncounted(runner, spool_one):
    failpoints.configure("pipeline=transient")
    spool_id = spool_one()
    (_, handled), = runner.run_once()
    assert handled.disposition is Disposition.WAIT and "failpoint" in handled.error
    envelope, _ = read_file(runner.spool.new / spool_id)
    assert envelope.attempts == 0 and _inbound(runner.app) == []
    failpoints.configure("")
    (_, handled), = runner.run_once()
    assert handled.result.outcome == "ticket_created"


def test_a_reply_waits_for_older_mail_then_stops_waiting(runner, spool_one):
    older = spool_one(make_message(subject="Still being written"))
    runner.spool.claim(older)  # held by another runner: the reply may answer it
    reply = spool_one(make_message(subject="Re: Still being written",
                                   extra_headers={"In-Reply-To": "<not-yet-processed@acme.example>"}))
    for _ in range(MAX_DEFERRALS):
        (spool_id, handled), = runner.run_once(may_defer=True)
        assert (spool_id, handled.disposition) == (reply, Disposition.DEFER)
    (_, handled), = runner.run_once(may_defer=True)
    assert handled.result.outcome == "ticket_created"  # it waited long enough


def test_when_not_even_the_quarantine_can_be_written_the_message_is_left_for_the_scan(runner, spool_one):
    failpoints.configure("pipeline=raise,quarantine=raise")
    spool_id = spool_one(attempts=runner.app.config.processing.max_attempts - 1)
    (_, handled), = runner.run_once()
    assert handled.disposition is Disposition.LEAVE
    assert spool_files(runner.app.config.state_dir)["cur"] == [spool_id]
    failpoints.configure("")
    assert runner.spool.recover() == 1  # the orphan scan puts it back, one more attempt counted
    (_, handled), = runner.run_once()
    assert handled.result.outcome == "ticket_created"


def test_the_pipe_keeps_nothing_when_it_must_answer_75(people_app):
    failpoints.configure("pipeline=transient")
    try:
        delivery = pipe.deliver(people_app, make_message(), "alice@acme.example", SUPPORT)
    finally:
        failpoints.configure("")
    assert delivery.exit_code == pipe.EX_TEMPFAIL and "database unavailable" in delivery.error
    assert spool_files(people_app.config.state_dir) == {"tmp": [], "new": [], "cur": []}  # the MTA keeps it


def test_the_pipe_retries_at_once_then_quarantines_and_exits_0(people_app):
    failpoints.configure("pipeline=raise:POISON")
    try:
        delivery = pipe.deliver(people_app, make_message(subject="POISON"), "alice@acme.example", SUPPORT)
    finally:
        failpoints.configure("")
    assert delivery.exit_code == pipe.EX_OK and delivery.result.outcome == "quarantined"
    record, = _inbound(people_app)
    assert record.attempts == people_app.config.processing.max_attempts
    with people_app.db.read_session() as s:
        assert s.exec(select(Ticket)).all() == []


# --- a worker that ran out of memory (issue 13: the campaign at the size limit) ----------------
# After big messages a worker's heap can stay fragmented: the next big message did not even
# fit to be read in ("cannot read the spool: MemoryError"), stayed in cur/ and got no outcome
# for as long as that worker lived. Now it goes back, and the worker makes way for a fresh one.


def test_a_message_that_cannot_be_read_in_goes_back_and_the_worker_makes_way(people_app, spool_one, monkeypatch):
    import asyncio

    spool_id = spool_one(make_message(subject="Big one"))
    read = people_app.spool._read_claim
    monkeypatch.setattr(people_app.spool, "_read_claim", lambda *a: (_ for _ in ()).throw(MemoryError()))
    exhausted = asyncio.Event()
    worn = Runner(people_app, on_memory_exhausted=exhausted.set)

    async def lane():
        stopping = asyncio.Event()
        await asyncio.wait_for(worn._lane(stopping), 10)  # returns: it does not go on worn out

    asyncio.run(lane())
    assert worn.memory_exhausted and not _inbound(people_app)
    assert spool_files(people_app.config.state_dir)["new"] == [spool_id]  # back, not stuck in cur/
    monkeypatch.setattr(people_app.spool, "_read_claim", read)
    (_, handled), = Runner(people_app).run_once()  # the fresh worker
    assert handled.result.outcome == "ticket_created"


def _out_of_memory(*args, **kwargs):
    raise MemoryError()


def test_out_of_memory_after_other_messages_is_tried_again_in_a_fresh_worker(people_app, spool_one, monkeypatch):
    worn = Runner(people_app, on_memory_exhausted=lambda: None)
    worn.handled = 1  # it has worked a message before
    monkeypatch.setattr(worn.pipeline, "process", _out_of_memory)
    spool_one(make_message(subject="Big one"))
    (_, handled), = worn.run_once()
    assert handled.disposition is Disposition.ALONE and worn.memory_exhausted and not _inbound(people_app)
    fresh = Runner(people_app, on_memory_exhausted=lambda: None)
    monkeypatch.setattr(fresh.pipeline, "process", _out_of_memory)
    (_, handled), = fresh.run_once()  # out of memory in a fresh worker too: the message's own doing
    assert handled.disposition is Disposition.DONE and handled.result.outcome == "quarantined"
    assert "out of memory" in _inbound(people_app)[0].error
