"""Outbound delivery (SPEC §7): the sender that empties the outbox through the relay, or into
the local Maildir when no relay is configured.

    outbox.py   claiming due rows (leases; FOR UPDATE SKIP LOCKED on PostgreSQL) and recording results
    relay.py    one SMTP session to the relay (aiosmtplib); failures sorted into temporary and permanent
    maildir.py  <state_dir>/outbox, written tmp + fsync + rename
    verp.py     the per-message return path a bounce is matched by
    sender.py   the loop in `serve`, and `outbox flush`
"""
