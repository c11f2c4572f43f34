"""Property-based tests: whatever arrives, the pipeline ends in an outcome and never raises."""

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mailgate import config as config_module
from mailgate.app import App
from mailgate.models import OUTCOMES
from mailgate.core.pipeline import Pipeline
from mailgate.core.spool import Envelope
from tests import world

_ids = itertools.count()

HEADER_NAMES = ["From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References", "Date",
                "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Auto-Submitted",
                "Precedence", "MIME-Version", "Return-Path"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, pg_template_name):
    from tests.conftest import TEST_DB
    from tests.support import pg_create_database, pg_drop_database_later, write_config

    tmp = tmp_path_factory.mktemp("properties")
    name = f"mg_prop_{next(_ids)}_{id(tmp)}"
    url = pg_create_database(name, pg_template_name) if TEST_DB == "postgresql" else f"sqlite:///{tmp}/p.db"
    app = App(config_module.load(write_config(tmp / "c.toml", tmp / "state", url, {}))).prepare()
    world.build(app)
    yield Pipeline(app)
    app.db.dispose()
    if TEST_DB == "postgresql":
        pg_drop_database_later(name)


def _check(pipeline: Pipeline, raw: bytes, sender) -> None:
    result = pipeline.process(f"prop-{next(_ids)}", Envelope(sender=sender, recipients=["support@example.com"]), raw)
    assert result.outcome in OUTCOMES
    assert result.inbound_id > 0


SETTINGS = settings(max_examples=int(os.environ.get("MAILGATE_HYPOTHESIS_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(raw=st.binary(max_size=3000), sender=st.one_of(st.none(), st.just(""), st.emails()))
def test_arbitrary_bytes_end_in_an_outcome(pipeline, raw, sender):
    _check(pipeline, raw, sender)


header_value = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200
) | st.sampled_from([
    "=?utf-8?q?broken", "=?x-unknown?b?AAAA?=", "<>", "<<a@b>>", "alice@acme.example", "\r\n\t folded",
    'multipart/mixed; boundary="', "text/plain; charset=x-nonsense", "[SD-1] Re:", "SD-99999999999",
])


@SETTINGS
@given(
    headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_value), max_size=12),
    body=st.binary(max_size=2000),
    from_alice=st.booleans(),
)
def test_arbitrary_header_values_end_in_an_outcome(pipeline, headers, body, from_alice):
    lines = [b"From: Alice <alice@acme.example>"] if from_alice else []
    for name, value in headers:
        lines.append(name.encode() + b": " + value.encode("utf-8", "surrogateescape"))
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    _check(pipeline, raw, "alice@acme.example")


@SETTINGS
@given(parts=st.lists(st.tuples(header_value, st.binary(max_size=500)), min_size=1, max_size=5),
       boundary=st.sampled_from(["b1", "", "x" * 80, "b1--"]))
def test_arbitrary_multipart_ends_in_an_outcome(pipeline, parts, boundary):
    out = [b"From: alice@acme.example", b"Subject: parts",
           f'Content-Type: multipart/mixed; boundary="{boundary}"'.encode(), b""]
    for content_type, payload in parts:
        out += [f"--{boundary}".encode(), b"Content-Type: " + content_type.encode("utf-8", "replace"),
                b"Content-Transfer-Encoding: base64", b"", payload]
    out.append(f"--{boundary}--".encode())
    _check(pipeline, b"\r\n".join(out), "alice@acme.example")
