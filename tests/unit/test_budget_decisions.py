"""The runner's decision about a message that blew its budget (mailgate.core.runner
`over_budget`): alone, it is quarantined at once, unparsed, its Message-ID kept; beside other
messages (the budget may have been theirs), it goes back once to be worked alone."""

from __future__ import annotations

from sqlmodel import select

from mailgate.core.runner import Runner
from mailgate.core.spool import Disposition, Envelope, read_file
from mailgate.models import Inbound
from tests.support import SUPPORT, make_message

WHY = "over the processing budget: out of memory"


def test_over_budget_beside_others_goes_back_once_to_be_worked_alone(people_app):
    runner, spool = Runner(people_app), people_app.spool
    spool_id = spool.put(make_message(message_id="<over@acme.example>"),
                         Envelope(sender="alice@acme.example", recipients=[SUPPORT]))
    claim = spool.claim(spool_id)
    handled = runner.over_budget(claim, WHY, in_company=True)
    assert handled.disposition is Disposition.ALONE
    spool.settle(claim, handled.disposition)
    envelope, _ = read_file(spool.new / spool_id)
    assert (envelope.overruns, envelope.attempts, envelope.alone) == (1, 0, True)

    claim = spool.claim(spool_id)
    handled = runner.over_budget(claim, WHY, in_company=True)  # worked alone now: no one else to blame
    spool.settle(claim, handled.disposition)
    assert handled.disposition is Disposition.DONE and handled.result.outcome == "quarantined"
    with people_app.db.read_session() as s:
        record, = s.exec(select(Inbound)).all()
    assert (record.message_id, record.error, record.from_address) == ("<over@acme.example>", WHY, None)
    assert spool.depth() == 0


def test_over_budget_alone_is_quarantined_at_once(people_app):
    runner, spool = Runner(people_app), people_app.spool
    spool_id = spool.put(make_message(message_id="<alone@acme.example>"),
                         Envelope(sender="alice@acme.example", recipients=[SUPPORT]))
    claim = spool.claim(spool_id)
    handled = runner.over_budget(claim, WHY)
    spool.settle(claim, handled.disposition)
    assert handled.disposition is Disposition.DONE and handled.result.outcome == "quarantined"
