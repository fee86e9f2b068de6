-- depends: 0100_pause
-- Activity and auto-resume (docs/pause-resume.md, "Activity and the timeout"):
-- auto_resume     the create's autoResume.enabled: proxy traffic to the paused sandbox resumes it;
-- idle_timeout_s  the TTL last granted by create/set_timeout/resume: activity keeps end_at at least this far ahead;
-- ttl_set_at      when an explicit call last set the TTL: activity never moves end_at past this + 24 h;
-- transition_at   when the row entered pausing/resuming: the reconciler settles rows stuck there too long.

ALTER TABLE sandboxes ADD COLUMN auto_resume boolean NOT NULL DEFAULT false;
ALTER TABLE sandboxes ADD COLUMN idle_timeout_s integer;
ALTER TABLE sandboxes ADD COLUMN ttl_set_at timestamptz;
ALTER TABLE sandboxes ADD COLUMN transition_at timestamptz;
