"""accounts.suspended_at and desk_action_reasons: suspension by a desk, and the reasons of
desk actions that need no second person

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00.000000

gateway.desks.suspension: a desk suspends an account on suspected misuse; a four-eyes
`lift_suspension` clears `suspended_at`. A nullable column without a default: on PostgreSQL
adding it changes only the catalogue, however many accounts there are.
gateway.desks.models.DeskActionReason: the reason of a suspension or of a desk's removal of an
eID link, beside the audit entry it belongs to.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.db

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('suspended_at', gateway.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_table(
        'desk_action_reasons',
        sa.Column('audit_seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('reason', sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(
            ['audit_seq'], ['audit_log.seq'],
            name=op.f('fk_desk_action_reasons_audit_seq_audit_log'),
        ),
        sa.PrimaryKeyConstraint('audit_seq', name=op.f('pk_desk_action_reasons')),
    )


def downgrade() -> None:
    op.drop_table('desk_action_reasons')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('suspended_at')
