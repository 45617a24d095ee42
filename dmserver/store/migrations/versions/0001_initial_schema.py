"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-12-04 15:52:37.122087
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=128), nullable=False),
    sa.Column('client_username', sa.String(length=128), nullable=False),
    sa.Column('client_password', sa.String(length=256), nullable=False),
    sa.Column('server_password', sa.String(length=256), nullable=False),
    sa.Column('auth_scheme', sa.String(length=32), nullable=False),
    sa.Column('client_nonce', sa.LargeBinary(length=64), nullable=True),
    sa.Column('server_nonce', sa.LargeBinary(length=64), nullable=True),
    sa.Column('manufacturer', sa.String(length=128), nullable=True),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('firmware_version', sa.String(length=128), nullable=True),
    sa.Column('fumo_root', sa.String(length=256), nullable=False),
    sa.Column('msisdn', sa.String(length=32), nullable=True),
    sa.Column('delivery', sa.String(length=16), nullable=False),
    sa.Column('nonce_form', sa.String(length=16), nullable=True),
    sa.Column('profile', sa.JSON(), nullable=False),
    sa.Column('dev_info', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id')
    )
    op.create_table('dm_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=128), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.Column('last_msg_id', sa.String(length=16), nullable=True),
    sa.Column('last_request_sha256', sa.String(length=64), nullable=True),
    sa.Column('last_reply', sa.LargeBinary(), nullable=True),
    sa.Column('last_reply_type', sa.String(length=64), nullable=True),
    sa.Column('ended', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token')
    )
    with op.batch_alter_table('dm_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_dm_sessions_device_sid', ['device_id', 'session_id'], unique=False)

    op.create_table('firmware',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=128), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model', 'version')
    )
    op.create_table('packages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('source_version', sa.String(length=128), nullable=True),
    sa.Column('target_version', sa.String(length=128), nullable=False),
    sa.Column('payload_type', sa.String(length=16), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model', 'source_version', 'target_version', 'payload_type')
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('target_version', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('package_id', sa.Integer(), nullable=True),
    sa.Column('source_version', sa.String(length=128), nullable=True),
    sa.Column('fumo_node', sa.String(length=256), nullable=True),
    sa.Column('result_code', sa.Integer(), nullable=True),
    sa.Column('result_text', sa.String(length=256), nullable=True),
    sa.Column('install_status', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['package_id'], ['packages.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_device_state', ['device_pk', 'state'], unique=False)

    op.create_table('tree_values',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_pk', 'path')
    )
    op.create_table('job_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_events_job_id'), ['job_id'], unique=False)
    op.create_table('mgmt_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_pk', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('commands', sa.JSON(), nullable=False),
    sa.Column('results', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['device_pk'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_mgmt_requests_device_pk'), 'mgmt_requests', ['device_pk'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_mgmt_requests_device_pk'), table_name='mgmt_requests')
    op.drop_table('mgmt_requests')
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_events_job_id'))

    op.drop_table('job_events')
    op.drop_table('tree_values')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_device_state')

    op.drop_table('jobs')
    op.drop_table('packages')
    op.drop_table('firmware')
    with op.batch_alter_table('dm_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_dm_sessions_device_sid')

    op.drop_table('dm_sessions')
    op.drop_table('devices')
