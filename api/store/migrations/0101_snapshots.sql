-- depends: 0100_pause
-- Named snapshots of sandboxes (E2B SnapshotInfo): the files live on the host that took them; sandboxes created
-- from a snapshot restore from those files. `names` are the E2B names (the given name, else the id).

CREATE TABLE snapshots (
    id             text PRIMARY KEY,
    team_id        uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    host_id        text REFERENCES hosts (id) ON DELETE SET NULL,
    sandbox_id     text NOT NULL,
    template       text NOT NULL,
    names          text[] NOT NULL,
    vcpus          integer NOT NULL,
    memory_mb      integer NOT NULL,
    disk_mb        integer NOT NULL,
    created_at     timestamptz NOT NULL
);
CREATE INDEX snapshots_team_idx ON snapshots (team_id, created_at, id);
CREATE INDEX snapshots_names_idx ON snapshots USING gin (names);
