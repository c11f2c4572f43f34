"""The agents' JSON API over real HTTP on loopback (the daemon's HTTP side, served in the test
process): auth, filters, actions, regions."""

import json
import urllib.error
import urllib.request

import pytest

from mailgate import config as config_module
from mailgate.app import App
from tests import world
from tests.inprocess import running_http

TOKENS = {"eu": "eu-agent-token-0123456789", "us": "us-agent-token-0123456789",
          "ro": "readonly-token-0123456789"}
AGENTS = [
    {"name": "eva", "token": TOKENS["eu"], "region": "eu"},
    {"name": "ulf", "token": TOKENS["us"], "region": "us"},
    {"name": "rita", "token": TOKENS["ro"], "read_only": True},
]


@pytest.fixture
def api(make_config, cli):
    config = make_config("api.toml", agents=AGENTS)
    app = App(config_module.load(config)).prepare()
    world.build(app)
    with running_http(app) as port:
        yield _client(port, lambda *args: cli(*args, config=config))
    app.close()


def _client(port: int, cli):

    def call(method, path, token=TOKENS["eu"], body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    call.cli = cli
    return call


def test_authentication(api):
    assert api("GET", "/tickets", token=None)[0] == 401
    status, body = api("GET", "/tickets", token="wrong-token-wrong-token")
    assert status == 401 and "bearer token" in body["error"]
    assert api("GET", "/tickets")[0] == 200


def test_list_with_filters(api):
    status, rows = api("GET", "/tickets")
    assert status == 200 and [r["key"] for r in rows] == ["SD-1", "SD-2"]
    assert [r["key"] for r in api("GET", "/tickets?organisation=Globex")[1]] == ["SD-2"]
    assert [r["key"] for r in api("GET", "/tickets?q=login")[1]] == ["SD-1"]
    assert [r["key"] for r in api("GET", "/tickets?q=100%25")[1]] == []
    assert [r["key"] for r in api("GET", "/tickets?status=in_review&type=request")[1]] == ["SD-1", "SD-2"]
    assert api("GET", "/tickets?status=closed")[1] == []
    assert [r["key"] for r in api("GET", "/tickets?creator=gina@globex.example")[1]] == ["SD-2"]


def test_the_desk_filter_is_checked(make_config, cli):
    """SPEC §11: ?desk=NAME lists one desk's tickets; a desk that does not exist is a 400 naming the desks."""
    from mailgate.ingest import pipe
    from tests.support import make_message

    config = make_config("desks.toml", agents=AGENTS, desks=[
        {"name": "billing", "addresses": ["billing@example.com"], "key_prefix": "BILL"}])
    app = App(config_module.load(config)).prepare()
    world.build(app)
    pipe.deliver(app, make_message(subject="Invoice"), "alice@acme.example", "billing@example.com")
    with running_http(app) as port:
        api = _client(port, None)
        assert [r["key"] for r in api("GET", "/tickets?desk=billing")[1]] == ["BILL-1"]
        assert [r["key"] for r in api("GET", "/tickets?desk=default")[1]] == ["SD-1", "SD-2"]
        status, body = api("GET", "/tickets?desk=bills")
        assert status == 400 and "desk: 'bills' is not one of default, billing" in body["error"]
    app.close()


def test_show_comment_and_set(api):
    status, ticket = api("GET", "/tickets/SD-1")
    assert status == 200 and ticket["summary"] == "Login page shows error 500"
    status, ticket = api("POST", "/tickets/SD-1/comments", body={"body": "Looking into it."})
    assert status == 201 and ticket["comments"][-1]["author"] == "agent:eva"
    status, ticket = api("POST", "/tickets/SD-1/comments", body={"body": "note", "internal": True})
    assert ticket["comments"][-1]["internal"] is True
    status, ticket = api("PATCH", "/tickets/SD-1", body={"type": "incident", "priority": "P1", "status": "in_progress"})
    assert status == 200 and (ticket["type"], ticket["priority"], ticket["status"]) == ("incident", "P1", "in_progress")


@pytest.mark.parametrize("method, path, body, status", [
    ("PATCH", "/tickets/SD-1", {"priority": "P1"}, 422),
    ("PATCH", "/tickets/SD-1", {"status": "nonsense"}, 422),
    ("PATCH", "/tickets/SD-1", {}, 400),
    ("PATCH", "/tickets/SD-1", {"colour": "red"}, 400),
    ("PATCH", "/tickets/SD-404", {"status": "resolved"}, 404),
    ("POST", "/tickets/SD-1/comments", {"internal": True}, 400),
    ("POST", "/tickets/SD-1/comments", {"body": 42}, 400),
    ("PUT", "/tickets/SD-1/subscriptions/nobody@acme.example", {"notify": True}, 404),
    ("PUT", "/tickets/SD-1/subscriptions/gina@globex.example", {"notify": True}, 422),
])
def test_errors_are_json_with_status(api, method, path, body, status):
    got, answer = api(method, path, body=body)
    assert got == status and answer["error"]


def test_closed_is_final_409(api):
    assert api("PATCH", "/tickets/SD-1", body={"status": "closed"})[0] == 200
    assert api("PATCH", "/tickets/SD-1", body={"status": "in_review"})[0] == 409


def test_read_only_agent(api):
    assert api("GET", "/tickets/SD-1", token=TOKENS["ro"])[0] == 200
    status, body = api("POST", "/tickets/SD-1/comments", token=TOKENS["ro"], body={"body": "hi"})
    assert status == 403 and "may read" in body["error"]


def test_confidential_tickets_only_for_the_region(api):
    assert api("PATCH", "/tickets/SD-1", body={"confidential": True})[0] == 200
    assert [r["key"] for r in api("GET", "/tickets", token=TOKENS["us"])[1]] == ["SD-2"]
    assert api("GET", "/tickets/SD-1", token=TOKENS["us"])[0] == 404
    assert api("POST", "/tickets/SD-1/comments", token=TOKENS["us"], body={"body": "x"})[0] == 404
    assert api("GET", "/tickets/SD-1", token=TOKENS["ro"])[0] == 404  # no region: no confidential
    assert api("GET", "/tickets/SD-1")[0] == 200


def test_switch_a_contacts_notifications(api):
    status, body = api("PUT", "/tickets/SD-1/subscriptions/bernd@acme.example", body={"notify": True})
    assert status == 200 and body == {"ticket": "SD-1", "contact": "bernd@acme.example", "notify": True}
    code, out, _ = api.cli("ticket", "show", "SD-1", "--json")
    assert {"contact": "bernd@acme.example", "notify": True} in json.loads(out)["subscriptions"]


def test_openapi_describes_every_route(api):
    status, spec = api("GET", "/openapi.json", token=None)  # the description is public
    assert status == 200 and spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/api/v1/tickets", "/api/v1/tickets/{key}", "/api/v1/tickets/{key}/comments",
                                  "/api/v1/tickets/{key}/subscriptions/{email}"}
