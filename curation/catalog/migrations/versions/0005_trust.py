"""trust the data: posts keep the site's time (favourites tie-break); lyric candidates keep the original
bytes' hash, the last provider error and how many runs failed

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('posted_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('lyric_candidates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('original_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('lyric_candidates', schema=None) as batch_op:
        batch_op.drop_column('attempts')
        batch_op.drop_column('error')
        batch_op.drop_column('original_sha256')
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.drop_column('posted_at')
