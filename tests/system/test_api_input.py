"""Issue 14 (8) and 13: the agents' API against a real `mailgate serve` — every malformed
request gets a JSON 4xx (a plain-text 500 before), lists are paged, filters are checked,
and a ticket cannot be made confidential where no agent would see it again."""

from __future__ import annotations

import http.client
import json

import pytest

from mailgate import config as config_module
from mailgate.app import App
from tests import world

TOKEN = "eva-agent-token-0123456789"
AGENTS = [{"name": "eva", "token": TOKEN, "region": "eu"}]


@pytest.fixture
def http_api(make_config, daemon):
    config = make_config("api.toml", agents=AGENTS)
    app = App(config_module.load(config)).prepare()
    world.build(app)
    app.db.dispose()
    d = daemon(config)

    def call(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=30)
        # putrequest/putheader: the bytes go out as they are (http.client would refuse some)
        connection.putrequest(method, path, skip_accept_encoding=True)
        sent = {"Authorization": f"Bearer {TOKEN}".encode(), **(headers or {})}
        if body is not None:
            sent.setdefault("Content-Type", b"application/json")
            sent["Content-Length"] = str(len(body)).encode()
        for name, value in sent.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, response.getheader("Content-Type", ""), data, response

    return call


MALFORMED = [
    ("token not UTF-8", "GET", "/api/v1/tickets", None, {"Authorization": b"Bearer \xff\xfe\xc3("}, 401),
    ("nested 100,000 deep", "PATCH", "/api/v1/tickets/SD-1", b"[" * 100_000 + b"]" * 100_000, None, 400),
    ("nested objects", "PATCH", "/api/v1/tickets/SD-1", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, None, 400),
    ("a lone surrogate", "POST", "/api/v1/tickets/SD-1/comments", b'{"body": "\\ud800 hi"}', None, 400),
    ("a 5,000-digit number", "PATCH", "/api/v1/tickets/SD-1", b'{"status": ' + b"9" * 5000 + b"}", None, 400),
    ("a list, not an object", "PATCH", "/api/v1/tickets/SD-1", b'["status"]', None, 400),
    ("a string", "PATCH", "/api/v1/tickets/SD-1", b'"in_review"', None, 400),
    ("not UTF-8", "PATCH", "/api/v1/tickets/SD-1", b'{"status": "\xff"}', None, 400),
    ("not JSON", "PATCH", "/api/v1/tickets/SD-1", b"status=closed", None, 400),
    ("form content type", "PATCH", "/api/v1/tickets/SD-1", b'{"status": "in_progress"}',
     {"Content-Type": b"application/x-www-form-urlencoded"}, 415),
    ("a charset Python does not know", "PATCH", "/api/v1/tickets/SD-1", b'{"status": "in_progress"}',
     {"Content-Type": b"text/plain; charset=no-such-charset"}, 415),
    ("a number where a boolean goes", "PATCH", "/api/v1/tickets/SD-1", b'{"confidential": 1}', None, 400),
    ("a boolean where text goes", "POST", "/api/v1/tickets/SD-1/comments", b'{"body": true}', None, 400),
    ("an unknown field", "PATCH", "/api/v1/tickets/SD-1", b'{"owner": "eva"}', None, 400),
    ("a key that is no key", "GET", "/api/v1/tickets/%ED%A0%80", None, None, 404),
    ("a surrogate in the address", "PUT", "/api/v1/tickets/SD-1/subscriptions/%ED%A0%80@x.example",
     b'{"notify": true}', None, 404),
    ("a filter too long to be one", "GET", "/api/v1/tickets?q=" + "x" * 5000, None, None, 400),
    ("an unknown route", "GET", "/api/v1/nothing", None, None, 404),
    ("a wrong method", "DELETE", "/api/v1/tickets/SD-1", None, None, 405),
    ("too large", "POST", "/api/v1/tickets/SD-1/comments", b'{"body": "' + b"x" * 2_000_000 + b'"}', None, 413),
]


def test_every_malformed_request_gets_a_json_4xx(http_api):
    for name, method, path, body, headers, status in MALFORMED:
        got, kind, data, _ = http_api(method, path, body, headers)
        assert (got, kind.split(";")[0]) == (status, "application/json"), (name, got, kind, data[:200])
        assert isinstance(json.loads(data)["error"], str), name
    got, _, data, _ = http_api("GET", "/api/v1/tickets/SD-1")
    detail = json.loads(data)
    assert got == 200 and detail["status"] == "in_review" and detail["comments"] == []  # nothing changed


def test_lists_are_paged_and_filters_checked(http_api):
    got, _, data, response = http_api("GET", "/api/v1/tickets?limit=1")
    assert got == 200 and [t["key"] for t in json.loads(data)] == ["SD-1"]
    assert response.getheader("X-Total-Count") == "2"
    link = response.getheader("Link")
    assert link.endswith('>; rel="next"') and "offset=1" in link and "limit=1" in link
    following = link[1:link.index(">")]
    got, _, data, response = http_api("GET", following[following.index("/api/"):])
    assert [t["key"] for t in json.loads(data)] == ["SD-2"] and response.getheader("Link") is None
    for query, words in (("status=bogus", ["status", "'bogus'", "in_review"]), ("type=thing", ["type", "incident"]),
                         ("limit=0", ["limit"]), ("limit=100000", ["limit", "500"]), ("offset=-1", ["offset"]),
                         ("colour=red", ["unknown parameter 'colour'"])):
        got, kind, data, _ = http_api("GET", f"/api/v1/tickets?{query}")
        error = json.loads(data)["error"]
        assert got == 400 and all(w in error for w in words), (query, error)
    got, _, data, _ = http_api("GET", "/api/v1/tickets?status=in_review&limit=500")
    assert got == 200 and len(json.loads(data)) == 2


def test_confidential_without_a_region_is_refused_naming_the_fix(http_api):
    got, _, data, _ = http_api("PATCH", "/api/v1/tickets/SD-2", b'{"confidential": true}')
    error = json.loads(data)["error"]
    assert got == 422 and "Globex" in error and "no region" in error and "org set" in error
    got, _, data, _ = http_api("GET", "/api/v1/tickets/SD-2")
    assert got == 200 and json.loads(data)["confidential"] is False  # still visible to everybody
    got, _, data, _ = http_api("PATCH", "/api/v1/tickets/SD-1", b'{"confidential": true, "status": "in_progress"}')
    assert got == 200 and json.loads(data)["confidential"] is True  # Acme is in eva's region, eu
