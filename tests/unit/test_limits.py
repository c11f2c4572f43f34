"""Hostile input: limits per message, safe attachment storage, kept for the operator."""

import json
from pathlib import Path

from tests.support import make_message


def _setup(cli, config=None):
    cli("org", "add", "Acme", config=config)
    cli("contact", "add", "alice@acme.example", "--name", "Alice", "--org", "Acme", config=config)


def _with_attachments(n: int, name="f{}.txt") -> bytes:
    parts = [b'From: alice@acme.example\r\nSubject: many\r\nMessage-ID: <many@acme.example>\r\n'
             b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee files\r\n']
    for i in range(n):
        parts.append(b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="'
                     + name.format(i).encode() + b'"\r\n\r\ndata%d\r\n' % i)
    parts.append(b"--b--\r\n")
    return b"".join(parts)


def test_too_many_attachments_is_quarantined_then_reprocessed(make_config, cli):
    tight = make_config("tight.toml", limits={"max_attachments": 5})
    _setup(cli, tight)
    code, out, _ = cli("deliver", "--json", stdin=_with_attachments(6), config=tight)
    assert code == 0 and json.loads(out)["outcome"] == "quarantined"
    row = json.loads(cli("inbox", "list", "--json", config=tight)[1])[0]
    assert row["error"] == "limit: 6 attachments (at most 5)"
    code, out, _ = cli("inbox", "reprocess", str(row["id"]))  # the default limit is 250
    assert code == 0 and "ticket_created SD-1" in out
    shown = json.loads(cli("ticket", "show", "SD-1", "--json")[1])
    assert len(shown["attachments"]) == 6


def test_header_limits(make_config, cli):
    tight = make_config("tight.toml", limits={"max_headers": 20, "max_header_bytes": 2000})
    _setup(cli, tight)
    many = make_message(extra_headers={f"X-Filler-{i}": "x" for i in range(30)})
    long = make_message(subject="s" * 3000)
    errors = [json.loads(cli("deliver", "--json", stdin=raw, config=tight)[1])["outcome"] for raw in (many, long)]
    assert errors == ["quarantined", "quarantined"]
    rows = json.loads(cli("inbox", "list", "--json", config=tight)[1])
    assert rows[0]["error"].startswith("limit: ") and "header fields" in rows[0]["error"]
    assert "a header of" in rows[1]["error"]


def test_attachment_names_are_kept_for_display_and_never_used_as_paths(cli, config_path):
    _setup(cli)
    names = ["../../../etc/passwd", "..\\..\\boot.ini", "CON", "a\x07b\x1b[31mred.txt", "/abs/path.sh"]
    raw = b'From: alice@acme.example\r\nSubject: names\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    for i, name in enumerate(names):
        raw += (f'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; '
                f'filename="{name}"\r\n\r\npayload{i}\r\n').encode()
    raw += b"--b--\r\n"
    assert json.loads(cli("deliver", "--json", stdin=raw)[1])["outcome"] == "ticket_created"
    attachments = json.loads(cli("ticket", "show", "SD-1", "--json")[1])["attachments"]
    assert [a["filename"] for a in attachments] == [
        "../../../etc/passwd", "..\\..\\boot.ini", "CON", "ab[31mred.txt", "/abs/path.sh"]
    state = config_path.parent / "state"
    stored = [p for p in (state / "attachments").rglob("*") if p.is_file()]
    assert {p.name for p in stored} >= {a["sha256"] for a in attachments}
    assert all(p.resolve().is_relative_to((state / "attachments").resolve()) for p in stored)
    assert not Path("/etc/passwd").read_bytes().startswith(b"payload")
