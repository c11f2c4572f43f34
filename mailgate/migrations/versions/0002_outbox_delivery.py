"""outbox delivery: VERP return path, claim lease, Message-ID index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

The sender claims outbound rows with a lease (claimed_until, claimed_by) so several instances
never send one row twice and a crashed sender's rows come back; envelope_sender is the VERP
address a bounce is matched by; DSNs that quote only the original Message-ID find their row
through the new index.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbound', schema=None) as batch_op:
        batch_op.add_column(sa.Column('envelope_sender', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True))
        batch_op.add_column(sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
        batch_op.create_index(batch_op.f('ix_outbound_message_id'), ['message_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbound', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbound_message_id'))
        batch_op.drop_column('claimed_by')
        batch_op.drop_column('claimed_until')
        batch_op.drop_column('envelope_sender')
