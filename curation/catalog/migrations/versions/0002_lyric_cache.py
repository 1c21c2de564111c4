"""lyric provider response cache; text hash of lyric candidates (duplicates)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lyric_responses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=60), nullable=False),
    sa.Column('key', sa.String(length=600), nullable=False),
    sa.Column('hit', sa.JSON(), nullable=True),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('provider', 'key', name='uq_lyric_responses_provider_key')
    )
    with op.batch_alter_table('lyric_candidates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('text_hash', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_lyric_candidates_text_hash'), ['text_hash'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('lyric_candidates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lyric_candidates_text_hash'))
        batch_op.drop_column('text_hash')
    op.drop_table('lyric_responses')
