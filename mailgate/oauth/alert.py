"""The operator's mail about an OAuth2 token that stopped working (SPEC §10).

It goes into the outbox like every notification, so it is durable and retried like them, to
`[operations] alert_address`. The refresher sends it once per failure episode (from the first
refused refresh to the next one that works), and notes in the token file that it did, so
neither its own retries nor another process on the same state directory send it again.
"""

from __future__ import annotations

import email.utils
import socket

from mailgate.models import utcnow
from mailgate.outbound import enqueue
from mailgate.notify.render import Headers
from mailgate.oauth.providers import Account

EVENT = "oauth_refresh_failed"


def queue(app, account: Account, error: str) -> int:
    """Write the operator's mail into the outbox; its row id. Blocking (the database)."""
    now = utcnow()
    config = app.config
    host = socket.gethostname()
    headers = Headers(subject=f"mailgate: the OAuth2 token of {account.name} stopped working",
                      to_address=config.operations.alert_address,
                      message_id=email.utils.make_msgid("mg.alert", domain=config.message_id_domain))
    context = {"account": account.name, "username": account.username, "provider": account.provider,
               "used_for": account.used_for, "error": error, "host": host}
    rendered = app.renderer.mail(EVENT, ("en",), context, headers, now)
    with app.db.session() as s:
        row = enqueue.add(s, app, ticket=None, event=EVENT, recipient=config.operations.alert_address,
                         rendered=rendered, now=now)
        row_id = row.id
    if app.on_outbound_queued is not None:
        app.on_outbound_queued()  # the daemon's sender: at once, not at its next poll
    return row_id
