"""What happened to a ticket, as the notifications (SPEC §5) need to know it."""

from __future__ import annotations

from dataclasses import dataclass, field

EVENTS = (
    "ticket_created", "comment_added", "status_changed", "type_changed",
    "priority_changed", "reminder", "unknown_sender_notice",
    "agent_notice",  # a proven agent's mail that could not be applied: why (SPEC §11)
)


@dataclass
class Event:
    kind: str
    ticket_id: int | None
    actor_contact_id: int | None = None  # never notified of their own action
    comment_id: int | None = None
    old: str | None = None
    new: str | None = None
    data: dict = field(default_factory=dict)
    actor_agent: str | None = None  # the agent who acted: never mailed about it (SPEC §11)
