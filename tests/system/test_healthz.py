"""Issue 14 (1): /healthz proves what it reports, against a real `mailgate serve`. Before, a
state directory on a full disk or a `spool/new` the daemon could not write answered 200 "ok"
while SMTP said 451, and an unreadable `spool/` a plain 500 with a traceback.

Permissions mean nothing to root, so the daemon runs without CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH (setpriv) — as the unprivileged `mailgate` user of the unit file would.
The full disk is a small tmpfs.
"""

from __future__ import annotations

import json
import shutil
import smtplib
import urllib.error
import urllib.request

import pytest

from tests.support import add_customer, fill_disk, make_message, send, tmpfs, write_config

NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _health(d) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{d.http_port}/healthz", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        assert e.headers["Content-Type"].startswith("application/json"), e.read()
        return e.code, json.loads(e.read())


@pytest.fixture
def unprivileged(daemon):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return lambda config: daemon(config, wrapper=NO_DAC)


@pytest.mark.slow
def test_healthz_fails_when_spool_new_cannot_be_written_or_the_spool_not_read(unprivileged, config_path, cli):
    add_customer(cli)
    d = unprivileged(config_path)
    spool = config_path.parent / "state" / "spool"
    status, body = _health(d)
    assert status == 200 and body["status"] == "ok" and body["problems"] == {}, body
    assert {body[k] for k in ("spool", "attachments", "disk", "database")} == {"ok"}

    (spool / "new").chmod(0o555)
    try:
        status, body = _health(d)
        assert status == 503 and body["spool"] == "failing" and body["database"] == "ok", body
        assert "spool/new" in body["problems"]["spool"] and "Permission denied" in body["problems"]["spool"]
        with pytest.raises(smtplib.SMTPDataError) as refused:  # what /healthz says, SMTP does
            send(d.smtp_port, make_message())
        assert refused.value.smtp_code == 451
    finally:
        (spool / "new").chmod(0o755)
    assert _health(d)[0] == 200

    spool.chmod(0o000)
    try:
        status, body = _health(d)
        assert status == 503 and body["spool"] == "failing" and body["spool_depth"] is None, body
        assert "Permission denied" in body["problems"]["spool"]
    finally:
        spool.chmod(0o755)
    status, body = _health(d)
    assert status == 200 and body["spool_depth"] == 0
    assert send(d.smtp_port, make_message(subject="Room again")) == {}
    assert d.stop() == 0


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", "6m") as mount:
        yield mount


@pytest.mark.slow
def test_healthz_fails_when_the_disk_has_no_room_for_the_largest_message(small_disk, database_url, tmp_path, daemon):
    config = write_config(tmp_path / "small.toml", small_disk / "state", database_url,
                          {"smtp": {"max_message_size": 1024 * 1024}})
    d = daemon(config)
    status, body = _health(d)
    assert status == 200 and body["free_bytes"]["spool"] > 1024 * 1024, body
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave less than one largest message, but some room
        f.write(b"\0" * (body["free_bytes"]["spool"] - 512 * 1024))
    status, body = _health(d)
    assert status == 503 and body["disk"] == "failing" and body["spool"] == "ok", body
    assert "less than smtp.max_message_size (1048576)" in body["problems"]["disk"]
    fill_disk(filler)  # and now no room at all: the probe's write fails too
    status, body = _health(d)
    assert status == 503 and body["spool"] == "failing" and "No space left" in body["problems"]["spool"], body
    filler.unlink()
    assert _health(d)[0] == 200
    assert d.stop() == 0
