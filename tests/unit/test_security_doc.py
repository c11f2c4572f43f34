"""SECURITY.md maps each promise to the test that shows it: every test it names must exist
(after the tests moved into tests/unit and tests/system, it named 23 paths that did not)."""

from __future__ import annotations

import re

from tests.support import REPO

_REFERENCE = re.compile(r"`?(tests/[\w/]+\.py)(?:::(\w+))?")


def test_every_test_security_md_names_exists():
    text = (REPO / "SECURITY.md").read_text()
    references = _REFERENCE.findall(text)
    assert len(references) > 30
    missing = []
    for path, name in references:
        source = REPO / path
        if not source.is_file():
            missing.append(path)
        elif name and not re.search(rf"^(?:async )?def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, missing
