-- depends: 0001_tenancy 0050_hosts
-- Sandboxes: the control plane's record of every sandbox, owned by one team and placed on one host.
-- state: creating -> running -> stopped (killed / expired); failed (create failed); missing (reconciler: the
-- host does not know it any more).

CREATE TABLE sandboxes (
    id               text PRIMARY KEY,
    team_id          uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    host_id          text REFERENCES hosts (id) ON DELETE SET NULL,
    template         text NOT NULL,
    state            text NOT NULL CHECK (state IN ('creating', 'running', 'stopped', 'failed', 'missing')),
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    vcpus            integer NOT NULL,
    memory_mb        integer NOT NULL,
    disk_mb          integer NOT NULL,
    envd_address     text,
    envd_version     text NOT NULL,
    envd_token       text,
    allow_internet   boolean NOT NULL DEFAULT true,
    auto_pause       boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz NOT NULL,
    end_at           timestamptz NOT NULL,
    stopped_at       timestamptz,
    stop_reason      text
);
CREATE INDEX sandboxes_team_live_idx ON sandboxes (team_id, started_at, id) WHERE state IN ('creating', 'running');
CREATE INDEX sandboxes_host_live_idx ON sandboxes (host_id) WHERE state IN ('creating', 'running');
CREATE INDEX sandboxes_metadata_idx ON sandboxes USING gin (metadata);
