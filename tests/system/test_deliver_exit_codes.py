"""Issue 14 (2, 3): `mailgate deliver` as Postfix's pipe runs it. A typo in master.cf exited 2
(argparse), which Postfix reads as a permanent failure and bounces every customer's mail; it
must be 75 (defer). And `smtp.max_message_size` — the one size limit of every inbound path —
was ignored by `deliver`: now 65 with 5.3.4 and the limit, read with a bound."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import add_customer, make_message


def test_a_usage_error_in_the_mtas_command_line_defers_the_mail(cli_process, cli, config_path):
    raw = make_message()
    result = cli_process("deliver", "--recipent", "support@example.com", stdin=raw)
    assert result.returncode == 75, result.stderr
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("mailgate: error: unrecognized arguments: --recipent")
    assert cli("deliver", "--help", stdin=raw)[0] == 75  # the message was not taken
    assert cli("deliver", "--sender", stdin=raw, config=config_path)[0] == 75  # an option without its value
    assert cli("deliver", stdin=raw, config=config_path.parent / "missing.toml")[0] == 75
    assert cli("ticket", "list", "--recipent", "x")[0] == 64  # any other command: usage is 64


def _deliver_measured(config, stdin: bytes) -> tuple[int, str, int]:
    """Exit code, stderr and peak RSS (KiB) of one `mailgate deliver` process."""
    probe = (
        "import resource, subprocess, sys\n"
        f"p = subprocess.run([sys.executable, '-m', 'mailgate', '--config', {str(config)!r}, 'deliver'],\n"
        "                   input=sys.stdin.buffer.read(), capture_output=True)\n"
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(p.stderr.decode())\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], input=stdin, capture_output=True, timeout=120)
    code, rss = result.stdout.split()
    return int(code), result.stderr.decode(), int(rss)


def test_a_message_over_the_size_limit_is_refused_with_65_and_read_with_a_bound(make_config, cli):
    limit = 64 * 1024
    config = make_config("limit.toml", smtp={"max_message_size": limit})
    add_customer(lambda *a, **k: cli(*a, config=config, **k))
    fits = make_message(body="x" * 1000)
    code, err, small_rss = _deliver_measured(config, fits)
    assert code == 0, err
    huge = make_message(body="y" * (48 * 1024 * 1024))  # 48 MB on stdin, 750 times the limit
    code, err, huge_rss = _deliver_measured(config, huge)
    assert code == 65, err
    assert "5.3.4" in err and f"smtp.max_message_size ({limit} bytes)" in err and err.count("\n") == 1
    assert huge_rss - small_rss < 16 * 1024, (small_rss, huge_rss)  # KiB: it never held the 48 MB
    at_limit = fits + b"z" * (limit - len(fits))
    code, _, err = cli("deliver", stdin=at_limit, config=config)
    assert code == 0, err
    code, _, err = cli("deliver", stdin=at_limit + b"z", config=config)
    assert code == 65 and "5.3.4" in err
    inbox = json.loads(cli("inbox", "list", "--json", config=config)[1])
    assert len(inbox) == 2 and {r["outcome"] for r in inbox} == {"ticket_created", "duplicate"}
