"""Outages (issue #7): the database stopped mid-run, the spool's disk full. Mail keeps being
taken or gets a clear 4xx, and everything is processed once the fault is gone."""

from __future__ import annotations

import json
import smtplib

import pytest

from tests import pgserver
from tests.support import fill_disk, make_message, send, tmpfs, wait_for, write_config


def _inbox(cli, config):
    return json.loads(cli("inbox", "list", "--json", config=config)[1])


@pytest.fixture
def private_pg():
    if not pgserver.available():
        pytest.skip("PostgreSQL server binaries are not installed")
    server = pgserver.PgServer()
    server.start()
    yield server
    server.remove()


@pytest.mark.slow
def test_database_stopped_mid_run(tmp_path, private_pg, daemon, cli):
    config = write_config(tmp_path / "pg.toml", tmp_path / "state", private_pg.url, {})
    cli("org", "add", "Acme", config=config)
    cli("contact", "add", "alice@acme.example", "--name", "Alice", "--org", "Acme", config=config)
    d = daemon(config)
    assert send(d.smtp_port, make_message(subject="Before the outage")) == {}
    wait_for(lambda: len(_inbox(cli, config)) == 1, message="first message processed")

    private_pg.stop()
    for i in range(5):  # the listener keeps spooling while the database is away
        assert send(d.smtp_port, make_message(subject=f"During the outage {i}")) == {}
    assert sum("database unavailable" in line for line in d.lines) <= 1  # an outage is logged once
    private_pg.start()

    rows = wait_for(lambda: (r := _inbox(cli, config)) and len(r) == 6 and r, timeout=90, message="backlog processed")
    assert [r["outcome"] for r in rows] == ["ticket_created"] * 6
    assert sum("database unavailable" in line for line in d.lines) == 1
    assert any("reachable again" in line for line in d.lines)
    assert d.stop() == 0


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "state", "4m") as mount:
        yield mount


@pytest.mark.slow
def test_spool_disk_full_answers_451_and_recovers(small_disk, database_url, tmp_path, daemon, cli):
    config = write_config(tmp_path / "full.toml", small_disk, database_url, {})
    cli("org", "add", "Acme", config=config)
    cli("contact", "add", "alice@acme.example", "--name", "Alice", "--org", "Acme", config=config)
    d = daemon(config)
    filler = small_disk / "filler"
    fill_disk(filler)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(d.smtp_port, make_message(subject="No room", body="x" * 200_000))
    assert refused.value.smtp_code == 451 and b"4.3.0" in refused.value.smtp_error
    filler.unlink()
    assert send(d.smtp_port, make_message(subject="Room again")) == {}
    rows = wait_for(lambda: _inbox(cli, config), message="processed after the disk was freed")
    assert [r["outcome"] for r in rows] == ["ticket_created"]
    assert d.stop() == 0
