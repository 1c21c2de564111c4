"""run alerts: tasks that failed for good and runs past their deadline, written by Airflow callbacks

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'run_alerts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=30), nullable=False),
        sa.Column('dag_id', sa.String(length=250), nullable=False),
        sa.Column('run_id', sa.String(length=250), nullable=False),
        sa.Column('task_id', sa.String(length=250), nullable=True),
        sa.Column('map_index', sa.Integer(), nullable=True),
        sa.Column('try_number', sa.Integer(), nullable=True),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_run_alerts_dag_run', 'run_alerts', ['dag_id', 'run_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_run_alerts_dag_run', table_name='run_alerts')
    op.drop_table('run_alerts')
