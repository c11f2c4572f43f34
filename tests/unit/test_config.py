"""The config file: every key documented, every mistake named (SPEC §8, §9 check-config)."""

import dataclasses
import re
import tomllib
import typing
from pathlib import Path

import pytest

from tests.support import REPO

from mailgate import config
from mailgate.config import Config, ConfigError, ImapConfig

EXAMPLE = REPO / "config" / "mailgate.toml"


def _example_with_imap() -> dict:
    """The example with its commented-out [[imap]] and [[agents]] tables switched on."""
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        if re.match(r"# (\[\[\w+\]\]|\w+ = )", line):
            line = line[2:]
        lines.append(line)
    return tomllib.loads("\n".join(lines))


def test_example_config_documents_every_key():
    data = _example_with_imap()
    hints = typing.get_type_hints(Config)
    for section, cls in hints.items():
        if section == "source":
            continue
        is_array = typing.get_origin(cls) is tuple
        cls = typing.get_args(cls)[0] if is_array else cls
        documented = data[section][0] if is_array else data[section]
        assert set(documented) == {f.name for f in dataclasses.fields(cls)}, section


def test_example_config_loads_and_equals_the_defaults():
    loaded = config.from_dict(tomllib.loads(EXAMPLE.read_text()))
    assert loaded == Config()


def test_example_imap_block_loads():
    data = _example_with_imap()
    data["agents"][0]["token"] = "x" * 32
    loaded = config.from_dict(data)
    assert loaded.imap == (dataclasses.replace(ImapConfig(), **data["imap"][0]),)
    assert loaded.agents[0].name == "sam"


@pytest.mark.parametrize("data, key", [
    ({"smtp": {"prot": 25}}, "smtp.prot"),
    ({"smpt": {}}, "[smpt]"),
    ({"smtp": {"port": "25"}}, "smtp.port"),
    ({"smtp": {"port": 70000}}, "smtp.port"),
    ({"smtp": {"lmtp": "yes"}}, "smtp.lmtp"),
    ({"tickets": {"support_addresses": "support@example.com"}}, "tickets.support_addresses"),
    ({"tickets": {"support_addresses": ["not-an-address"]}}, "tickets.support_addresses"),
    ({"tickets": {"key_prefix": "S D"}}, "tickets.key_prefix"),
    ({"database": {"url": "mysql://x"}}, "database.url"),
    ({"outbound": {"relay_tls": "ssl"}}, "outbound.relay_tls"),
    ({"policy": {"require_authenticated_sender": True}}, "policy.trusted_authserv_id"),
    ({"imap": [{"host": "x"}]}, "imap[0].username"),
])
def test_a_bad_value_names_its_key(data, key):
    with pytest.raises(ConfigError) as e:
        config.from_dict(data)
    assert key in str(e.value)





def test_environment_variable_names_the_config(tmp_path, config_path, monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, str(config_path))
    assert config.load().source == str(config_path)


def test_embedded_defaults():
    c = Config()
    assert (c.smtp.host, c.smtp.port, c.http.port) == ("127.0.0.1", 8025, 8080)
    assert c.database_url.startswith("sqlite:///") and c.database_url.endswith("var/mailgate.db")
    assert c.attachments_dir == Path("var/attachments")
