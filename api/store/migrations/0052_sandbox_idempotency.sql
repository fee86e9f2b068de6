-- depends: 0051_sandboxes
-- Idempotency-Key of POST /sandboxes (e2b SDK `idempotency_key=`): a repeated create with the same key returns the
-- sandbox the first one made, for as long as that sandbox is live.

ALTER TABLE sandboxes ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX sandboxes_idempotency_key ON sandboxes (team_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state IN ('creating', 'running');
