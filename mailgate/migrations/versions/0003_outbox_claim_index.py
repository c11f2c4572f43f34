"""outbox claim index: (status, next_attempt_at, id), and (recipient, created_at)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

The sender claims the most overdue queued row (ORDER BY next_attempt_at, id LIMIT 1); without
an index on that order the database sorts every queued row while it holds the claim's lock.
The per-recipient rate limit counts a recipient's rows of the last hour; the second index
makes that a range scan instead of a walk over the recipient's whole history.
"""
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_outbound_claim', 'outbound', ['status', 'next_attempt_at', 'id'], unique=False)
    op.create_index('ix_outbound_recipient_created_at', 'outbound', ['recipient', 'created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_outbound_recipient_created_at', table_name='outbound')
    op.drop_index('ix_outbound_claim', table_name='outbound')
