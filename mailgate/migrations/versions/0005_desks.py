"""desks: ticket.desk, and ticket numbers per key prefix

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

One gateway serves several desks (SPEC §11), each with its own key prefix whose numbers
start at 1. A ticket remembers its desk (`ticket.desk`, "default" for [tickets]); the one
counter of ticket numbers (`ticket`) becomes one per prefix (`ticket:SD`), each starting
from the highest number its prefix already has, so no key is ever given twice — prefixes
changed in the config before are counted too.
"""
import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('ticket', sa.Column('desk', sa.String(length=100), nullable=False, server_default='default'))
    op.create_index('ix_ticket_desk_status', 'ticket', ['desk', 'status'], unique=False)
    conn = op.get_bind()
    highest = _highest_numbers(conn)
    legacy = conn.execute(sa.text("SELECT value FROM counter WHERE name = 'ticket'")).scalar()
    newest = conn.execute(sa.text("SELECT key FROM ticket ORDER BY id DESC LIMIT 1")).scalar()
    if legacy and newest:  # the prefix in use: its numbers went on from the one counter
        prefix = newest.rpartition("-")[0].upper()
        highest[prefix] = max(highest.get(prefix, 0), legacy)
    counter = sa.table('counter', sa.column('name', sa.String), sa.column('value', sa.Integer))
    for prefix, value in sorted(highest.items()):
        op.execute(counter.insert().values(name=f"ticket:{prefix}", value=value))
    op.execute(counter.delete().where(counter.c.name == 'ticket'))


def downgrade() -> None:
    conn = op.get_bind()
    value = max(_highest_numbers(conn).values(), default=0)
    counter = sa.table('counter', sa.column('name', sa.String), sa.column('value', sa.Integer))
    op.execute(counter.delete().where(counter.c.name.like('ticket:%')))
    op.execute(counter.insert().values(name='ticket', value=value))
    op.drop_index('ix_ticket_desk_status', table_name='ticket')
    with op.batch_alter_table('ticket') as batch:
        batch.drop_column('desk')


def _highest_numbers(conn) -> dict[str, int]:
    """The highest number of each key prefix among the tickets (read in one pass)."""
    highest: dict[str, int] = {}
    for (key,) in conn.execute(sa.text("SELECT key FROM ticket")):
        prefix, _, number = key.rpartition("-")
        if number.isdigit():
            highest[prefix.upper()] = max(highest.get(prefix.upper(), 0), int(number))
    return highest
