"""comment.full_body: the whole text of the mail a comment came from

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A comment's body is the new text of a reply, its quoted history and signature cut off; the
cut may be wrong, so the whole text stays with the comment (SPEC §4.7). NULL for comments
that did not come from mail (and for those stored before): their body is all there is.
"""
import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('comment', sa.Column('full_body', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('comment', 'full_body')
