"""crawl: near-duplicate images link to their original, bounded retries, last HTTP status, status index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('duplicate_of', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('http_status', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_images_duplicate_of', 'images', ['duplicate_of'], ['id'])
        batch_op.create_index('ix_images_status', ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index('ix_images_status')
        batch_op.drop_constraint('fk_images_duplicate_of', type_='foreignkey')
        batch_op.drop_column('http_status')
        batch_op.drop_column('attempts')
        batch_op.drop_column('duplicate_of')
