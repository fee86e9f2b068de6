-- depends: 0051_sandboxes
-- Pause and resume: a sandbox may be pausing, paused (its files on its host, no RAM or CPU held) or resuming.
-- All three are live (visible, kept by the reconciler); only creating/running hold host capacity.

ALTER TABLE sandboxes DROP CONSTRAINT sandboxes_state_check;
ALTER TABLE sandboxes ADD CONSTRAINT sandboxes_state_check
    CHECK (state IN ('creating', 'running', 'pausing', 'paused', 'resuming', 'stopped', 'failed', 'missing'));
ALTER TABLE sandboxes ADD COLUMN paused_at timestamptz;
ALTER TABLE sandboxes ADD COLUMN pause_memory boolean NOT NULL DEFAULT true;
