-- depends: 0052_sandbox_idempotency
-- The proxy routes requests of older SDKs (no E2b-Sandbox-Id header) by their envd access token.

CREATE INDEX sandboxes_envd_token_idx ON sandboxes (envd_token) WHERE state = 'running' AND envd_token IS NOT NULL;
