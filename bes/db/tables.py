"""Table definitions (SQLAlchemy Core). Migrations in ``bes/db/migrations`` create them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
    }
)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every dialect.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive
    UTC and given their zone back when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


# One row per activity: its current state. Kept small (the documents are in
# activity_document): it is rewritten at every transition.
activity = Table(
    "activity",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(256), nullable=False),
    Column("state", String(16), nullable=False),
    Column("substate", String(32)),
    Column("message", Text),
    Column("exit_code", Integer),
    Column("job_name", Text),
    Column("backend", String(64)),
    Column("backend_job_id", String(256)),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("outputs", Boolean, nullable=False, server_default=false()),
    Column("warnings", Text),
    Column("parent_id", String(32)),
    Column("children", Integer, nullable=False, server_default="0"),
    Column("pool", String(64)),  # the pool of workers its backend routed it to
    Column("access", Text),  # a VM lease's way in, JSON (bes.access), once its VM is up
    Column("dispatch_owner", String(64)),
    Column("dispatch_until", UtcDateTime()),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("changed_at", UtcDateTime(), nullable=False),
    Index(None, "owner", "created_at"),
    Index(None, "state", "created_at", "id"),  # also: one state's activities newest first
    Index(None, "owner", "state", "created_at", "id"),  # one owner's in one state, in order
    Index(None, "parent_id"),
    Index(None, "created_at", "id"),  # everyone's activities newest first (administrators)
)

# The activities still to hand to their backend (the dispatcher's claim): a partial index, so
# that neither activities queued at create (the desktop grid) nor backend-less ones are in it.
Index(
    "ix_activity_to_dispatch",
    activity.c.state,
    activity.c.created_at,
    sqlite_where=activity.c.backend.is_not(None) & activity.c.backend_job_id.is_(None),
    postgresql_where=activity.c.backend.is_not(None) & activity.c.backend_job_id.is_(None),
)

# What an activity was created from, written once: the JobDefinition as submitted and its
# parsed model (JSON, bes.jsdl.codec) that backends and workers run.
activity_document = Table(
    "activity_document",
    metadata,
    Column("id", String(32), ForeignKey("activity.id", ondelete="CASCADE"), primary_key=True),
    Column("document", Text, nullable=False),
    Column("job", Text, nullable=False),
)

# Every state transition, with its time and reason: the activity's history.
activity_event = Table(
    "activity_event",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column(
        "activity_id",
        String(32),
        ForeignKey("activity.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("at", UtcDateTime(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("substate", String(32)),
    Column("message", Text),
    Index(None, "activity_id", "id"),
)

# Service-wide settings that every replica must agree on (e.g. accepting new activities).
setting = Table(
    "setting",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Volunteer and worker nodes of the desktop grid. A worker authenticates with a token that an
# administrator issued (``bes worker-token create``); only its sha256 is stored.
worker = Table(
    "worker",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime()),
    Column("facts", Text),
    Column("last_seen_at", UtcDateTime()),
    # Which pool's jobs it may claim: "volunteers", or "cloud:NAME" for a cloud's instances.
    # Set with its token (by an administrator, or by the autoscaler), never by the worker.
    Column("pool", String(64), nullable=False, server_default="volunteers"),
    Column("draining_at", UtcDateTime()),  # set: it claims nothing more (about to be deleted)
)

# The desktop grid's queue: one row per job handed to the backend, leased to one worker at a
# time (the job itself is the activity's, in activity_document). ``lease_epoch`` grows with
# every claim, so a report about an earlier lease never matches the current one.
grid_job = Table(
    "grid_job",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("activity_id", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("substate", String(32)),
    Column("memory_mib", Integer, nullable=False),
    Column("vcpus", Integer, nullable=False),
    Column("disk_mib", Integer, nullable=False),
    Column("needs_network", Boolean, nullable=False),
    Column("hypervisors", String(64), nullable=False),
    Column("worker_id", String(32)),
    Column("lease_epoch", Integer, nullable=False),
    Column("lease_until", UtcDateTime()),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("ran", Boolean, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("exit_code", Integer),
    Column("message", Text),
    Column("result", Text),
    Column("queued_at", UtcDateTime(), nullable=False),
    Column("changed_at", UtcDateTime(), nullable=False),
    # The pool whose workers may claim it (bes.backends.desktopgrid.routing), whether the job
    # named it (pinned: never moved by a burst), and why it waits while queued.
    Column("pool", String(64), nullable=False, server_default="volunteers"),
    Column("pinned", Boolean, nullable=False, server_default=false()),
    Column("reason", Text),
    # A VM lease: its way in as its worker reported it (bes.access JSON), and whether its
    # owner asked to suspend it (the heartbeat tells the worker).
    Column("access", Text),
    Column("suspend_requested", Boolean, nullable=False, server_default=false()),
    Index(None, "state", "queued_at"),
    Index(None, "pool", "state", "queued_at"),
    Index(None, "activity_id"),
)

# The people who may use the service (``bes user add``). A password is kept twice, for two
# ways of checking it: ``password_hash`` (argon2id) checks PasswordText and HTTP Basic, and
# ``password_sealed`` (the password sealed with the service's key, bes.sealing) lets the
# service recompute a WS-Security PasswordDigest, which a one-way hash cannot. A user made
# with ``--no-digest`` has no sealed copy and cannot use PasswordDigest.
service_user = Table(
    "service_user",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("admin", Boolean, nullable=False, server_default=false()),
    Column("password_hash", Text),
    Column("password_sealed", Text),
    Column("certificate_subject", Text),
    Column("certificate_fingerprint", String(64)),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("changed_at", UtcDateTime(), nullable=False),
    Index(None, "certificate_subject"),
    Index(None, "certificate_fingerprint"),
)

# What authenticated requests used once and may not use again while they would still be
# accepted: PasswordDigest nonces (per user) and the signature values of signed messages.
# Shared by every replica through the database; rows past ``expires_at`` are deleted.
seen_nonce = Table(
    "seen_nonce",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index(None, "expires_at"),
)

# The file store (bes.filestore): files users uploaded, content-addressed per owner (the same
# sha256 under two owners is two rows and two copies, so nobody can probe for or claim another
# user's file by its hash). ``expired_at`` marks a file removed for lack of use (its row stays,
# so a job that still names it fails saying so); ``last_used_at`` is its upload, its last
# re-upload, or the last time an activity used it.
stored_file = Table(
    "stored_file",
    metadata,
    Column("owner", String(256), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_used_at", UtcDateTime(), nullable=False),
    Column("expired_at", UtcDateTime()),
    Index(None, "last_used_at"),
)

# Names users gave their stored files (PUT …/files/name/PATH, or a job's Target there).
file_name = Table(
    "file_name",
    metadata,
    Column("owner", String(256), primary_key=True),
    Column("name", String(1024), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("bound_at", UtcDateTime(), nullable=False),
    Index(None, "owner", "sha256"),
)

# Which activity names which stored file as an input: a file is not expired while an activity
# that names it has not ended.
file_ref = Table(
    "file_ref",
    metadata,
    Column(
        "activity_id", String(32), ForeignKey("activity.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("sha256", String(64), primary_key=True),
    Column("owner", String(256), nullable=False),
    Index(None, "owner", "sha256"),
)

# Each owner's bytes in the store, stored files and uploads under way together, and their quota
# (None: the site's default). One row per owner, changed by conditional UPDATEs only, so two
# uploads on two replicas cannot both pass the quota.
file_usage = Table(
    "file_usage",
    metadata,
    Column("owner", String(256), primary_key=True),
    Column("used_bytes", BigInteger, nullable=False, server_default="0"),
    Column("quota_bytes", BigInteger),
)

# Uploads under way: what they reserved of the owner's quota, and when they last moved (a stale
# one is dropped and its reservation given back).
file_upload = Table(
    "file_upload",
    metadata,
    Column("owner", String(256), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("total_bytes", BigInteger, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index(None, "updated_at"),
)

# Users' own VM images (bes.userimages): a disk of the owner's file store under a name jobs use
# like a template's. Private to the owner unless an administrator published it. A file an image
# uses does not expire (bes.db.file_rows.expire_files).
user_image = Table(
    "user_image",
    metadata,
    Column("owner", String(256), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("format", String(16), nullable=False),
    Column("os_type", String(64)),
    Column("min_memory_mib", Integer),
    Column("published", Boolean, nullable=False, server_default=false()),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "owner", "sha256"),
    Index(None, "name"),
)

# Worker nodes the cloud pools' autoscaler started (bes.clouds): one row per instance, kept
# after it is gone for the budget (instance-hours per day) and for the reconciler, which
# deletes instances of this deployment that no live row explains.
cloud_instance = Table(
    "cloud_instance",
    metadata,
    Column("name", String(128), primary_key=True),  # also its worker's name
    Column("pool", String(64), nullable=False),
    Column("provider_id", String(128)),
    Column("host", String(256)),
    Column("flavor", String(64), nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("vcpus", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("message", Text),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("registered_at", UtcDateTime()),
    Column("idle_since", UtcDateTime()),
    Column("ended_at", UtcDateTime()),
    Index(None, "pool", "state"),
    Index(None, "ended_at"),
)

# Duties that one replica at a time carries out (a cloud pool's autoscaler, the waiting-reason
# pass): whoever holds an unexpired row does it, and renews it; another takes over an expired one.
duty = Table(
    "duty",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("until", UtcDateTime(), nullable=False),
    Column("status", Text),  # what the holder last said of it (a pool's state, for people)
)

# The worker tunnels of VM leases (bes.relay): which replica holds each one's WebSocket, and
# how another replica reaches it to forward a user's stream there (the secret authenticates
# that replica-to-replica call; it never leaves the database and the replicas).
tunnel = Table(
    "tunnel",
    metadata,
    Column("activity_id", String(32), primary_key=True),
    Column("replica", String(64), nullable=False),
    Column("relay_url", Text, nullable=False),
    Column("secret", String(128), nullable=False),
    Column("connected_at", UtcDateTime(), nullable=False),
)

# Counts the database keeps up to date itself (bes.db.tally_rows, by triggers): activities per
# owner and state (by points), desktop-grid jobs per queue state (owner ''). Each database
# session counts into its own slot, so replicas' writers never wait on one row.
tally = Table(
    "tally",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("owner", String(256), primary_key=True),
    Column("state", String(16), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("n", BigInteger, nullable=False),
)

# CreateActivity requests already answered, by caller and WS-Addressing MessageID (hashed
# together): a client that retries a request whose answer it lost, on this replica or another,
# gets the activity that request created instead of a second one.
create_request = Table(
    "create_request",
    metadata,
    Column("key", String(64), primary_key=True),
    Column(
        "activity_id", String(32), ForeignKey("activity.id", ondelete="CASCADE"), nullable=False
    ),
    Column("at", UtcDateTime(), nullable=False),
    Index(None, "at"),
    Index(None, "activity_id"),
)
