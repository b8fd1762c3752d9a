"""accounts: suspension by a desk (suspended_at, suspension_reason)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00.000000

gateway.desks.suspension: a desk suspends an account on suspected misuse; a four-eyes
`lift_suspension` clears `suspended_at`. Two nullable columns without defaults: on PostgreSQL
adding them changes only the catalogue, however many accounts there are.
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
        batch_op.add_column(sa.Column('suspension_reason', sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('suspension_reason')
        batch_op.drop_column('suspended_at')
