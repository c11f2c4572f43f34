"""The commands at the top of an agent's mail (SPEC §11): `#status SLUG`, `#type SLUG`,
`#priority P1..P4` and `#internal`, each on its own line before anything else.

`read` takes them off the new text (the quoted history is already cut): blank lines between
them are allowed, the first line that is not a command ends them, and the rest is the
comment. A line that starts with `#` and a word is a command — a word that is no command
(`#stauts`) is a problem, not text, so that a typo never becomes a comment the customer
reads. Values are taken as slugs whatever their case, blanks or hyphens (`#status In
Progress` is `in_progress`, `#priority p2` is `P2`); whether a value is allowed is the ticket
rules' to say (`tickets.service.check_set`, which names it). Only the first MAX_LINES lines
are looked at, each up to MAX_LINE characters: the work is bounded whatever the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_LINES = 30  # lines looked at for commands (blank ones included)
MAX_LINE = 300  # a longer line is text, not a command
NAMES = ("status", "type", "priority", "internal")
_COMMAND = re.compile(r"#([A-Za-z][A-Za-z_-]{0,40})(?:[ \t]+(.*))?$")


@dataclass
class Commands:
    status: str | None = None
    type: str | None = None
    priority: str | None = None
    internal: bool = False
    problems: list[str] = field(default_factory=list)  # what is wrong, each naming the line's value
    lines: int = 0  # how many command lines there were

    @property
    def fields(self) -> dict[str, str]:
        """The field changes asked for (status, type, priority)."""
        return {name: value for name in ("status", "type", "priority") if (value := getattr(self, name))}


def read(text: str) -> tuple[Commands, str]:
    """The commands at the top of TEXT, and the text that follows them."""
    commands = Commands()
    position = 0
    for _ in range(MAX_LINES):
        end = text.find("\n", position)
        line = text[position:] if end < 0 else text[position:end]
        following = len(text) if end < 0 else end + 1
        stripped = line.strip()
        if stripped:
            match = _COMMAND.match(stripped) if len(stripped) <= MAX_LINE else None
            if match is None:
                break
            _take(commands, match.group(1).lower(), (match.group(2) or "").strip())
        position = following
        if end < 0:
            break
    return commands, text[position:].strip("\n")


def _take(commands: Commands, name: str, value: str) -> None:
    commands.lines += 1
    if name not in NAMES:
        commands.problems.append(f"unknown command #{name}; the commands are #status, #type, #priority, #internal")
    elif name == "internal":
        if value:
            commands.problems.append(f"#internal takes no value (got {value!r}): write the note on the lines below it")
        commands.internal = True
    elif not value:
        commands.problems.append(f"#{name} needs a value, e.g. {_EXAMPLES[name]}")
    else:
        normal = value.upper() if name == "priority" else re.sub(r"[\s-]+", "_", value.lower())
        given = getattr(commands, name)
        if given is not None and given != normal:
            commands.problems.append(f"#{name} is given twice ({given!r} and {normal!r})")
        setattr(commands, name, normal)


_EXAMPLES = {"status": "#status in_progress", "type": "#type software_defect", "priority": "#priority P2"}
