"""review app: curator accounts, per-curator review slots (leases), overlap per item

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('curators',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('review_assignments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('lease_owner', sa.String(length=100), nullable=True),
    sa.Column('lease_token', sa.String(length=64), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decision', sa.String(length=40), nullable=True),
    sa.Column('corrected_text', sa.Text(), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['item_id'], ['review_items.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id', 'slot', name='uq_review_assignments_item_slot'),
    sa.UniqueConstraint('lease_token', name='uq_review_assignments_token')
    )
    with op.batch_alter_table('review_assignments', schema=None) as batch_op:
        batch_op.create_index('ix_review_assignments_claim', ['state', 'priority', 'id'], unique=False)
        batch_op.create_index('ix_review_assignments_owner', ['lease_owner', 'state'], unique=False)

    with op.batch_alter_table('review_items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('overlap', sa.Integer(), nullable=True))

    # Items queued before this revision get their one slot, keeping any live lease and decision.
    op.execute(
        "INSERT INTO review_assignments (item_id, slot, priority, state, lease_owner, lease_token, "
        "lease_expires_at, decision, corrected_text, claimed_at, submitted_at) "
        "SELECT id, 0, priority, "
        "CASE WHEN state = 'decided' THEN 'submitted' WHEN state = 'leased' THEN 'leased' ELSE 'open' END, "
        "lease_owner, lease_token, lease_expires_at, decision, corrected_text, NULL, decided_at "
        "FROM review_items")


def downgrade() -> None:
    with op.batch_alter_table('review_items', schema=None) as batch_op:
        batch_op.drop_column('overlap')

    with op.batch_alter_table('review_assignments', schema=None) as batch_op:
        batch_op.drop_index('ix_review_assignments_owner')
        batch_op.drop_index('ix_review_assignments_claim')

    op.drop_table('review_assignments')
    op.drop_table('curators')
