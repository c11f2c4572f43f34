"""Issue 14 (8): a unit file a Debian admin would ship — no restart loop on a bad config, a
documented way to a writable shared attachments_dir, real documentation, and shutdown bounds
that fit in TimeoutStopSec (they added up to 60 s against 45)."""

from __future__ import annotations

import configparser
from pathlib import Path

from mailgate.serve import daemon, workers

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "mailgate.service"


def _service() -> tuple[configparser.SectionProxy, configparser.SectionProxy]:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    return unit["Unit"], unit["Service"]


def test_a_bad_config_is_not_restarted_for_ever():
    _, service = _service()
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"].split() == ["78"]


def test_documentation_is_real():
    unit, _ = _service()
    for uri in unit["Documentation"].split():
        assert "example.com" not in uri, uri
    readme = next(u for u in unit["Documentation"].split() if u.startswith("file:"))
    assert readme == "file:/opt/mailgate/README.md"  # where the README's install steps put the clone
    assert (ROOT / "README.md").is_file()


def test_a_shared_attachments_dir_is_made_writable_the_documented_way():
    text = UNIT.read_text()
    assert "ReadWritePaths=/srv/mailgate-attachments" in text and "systemctl edit mailgate" in text
    assert "ReadWritePaths=" in (ROOT / "README.md").read_text()


def test_shutdown_bounds_add_up_below_timeoutstopsec():
    _, service = _service()
    timeout = int(service["TimeoutStopSec"])
    assert daemon.STOP_BOUND_SECONDS >= max(daemon.SMTP_GRACE_SECONDS, daemon.IMAP_STOP_SECONDS,
                                            daemon.SHUTDOWN_GRACE_SECONDS)
    assert daemon.STOP_BOUND_SECONDS + 5 <= timeout, (daemon.STOP_BOUND_SECONDS, timeout)
    assert workers.STOP_SECONDS <= daemon.SHUTDOWN_GRACE_SECONDS  # a worker's stop fits in processing's
