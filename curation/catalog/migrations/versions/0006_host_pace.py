"""host pace: one pace per host shared by every crawl worker and shard

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'host_pace',
        sa.Column('host', sa.String(length=300), nullable=False),
        sa.Column('next_at', sa.Float(), server_default='0', nullable=False),
        sa.Column('penalty', sa.Float(), server_default='0', nullable=False),
        sa.Column('penalty_at', sa.Float(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('host'),
    )


def downgrade() -> None:
    op.drop_table('host_pace')
