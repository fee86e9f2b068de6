-- depends: 0002_jobs
-- Sessions are stateless JWTs; a user's sessions issued before this time are refused (logout, password change).

ALTER TABLE users ADD COLUMN sessions_valid_after timestamptz;
