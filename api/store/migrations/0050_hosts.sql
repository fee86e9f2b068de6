-- depends: 0001_tenancy
-- Host agents: one-time registration tokens, registered hosts with their last reported capacity.

CREATE TABLE host_tokens (
    token_hash text PRIMARY KEY,
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    host_id    text
);

CREATE TABLE hosts (
    id                text PRIMARY KEY,
    name              text NOT NULL,
    address           text NOT NULL,
    secret_hash       text NOT NULL,
    state             text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'unreachable', 'draining', 'removed')),
    info              jsonb NOT NULL DEFAULT '{}'::jsonb,
    vcpus_total       integer NOT NULL DEFAULT 0,
    vcpus_used        integer NOT NULL DEFAULT 0,
    memory_mb_total   integer NOT NULL DEFAULT 0,
    memory_mb_used    integer NOT NULL DEFAULT 0,
    disk_mb_free      bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL,
    last_heartbeat_at timestamptz NOT NULL
);
