-- Indexes for the maintainer's sweeps (maintainer/sweeping.py).

-- Sweeps page through unfinished runs of one stage by age with a keyset cursor
-- (last_modified, algorithm, id): a group-committed batch gives hundreds of rows the same
-- last_modified, so the key needs the tie-break to page without skipping or repeating.
-- This index serves every query the narrower runs_unfinished served, so it replaces it
-- (one index less to maintain on every transition).
CREATE INDEX runs_unfinished_by_age ON runs (lifecycle_stage, last_modified, algorithm, id)
    WHERE lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING');
DROP INDEX runs_unfinished;

-- Idempotency keys are cleared 24 h after their run was received; only runs that carry a
-- key are in this index, so finding the expired ones never scans the whole table.
CREATE INDEX runs_idempotency_by_age ON runs (received_at) WHERE idempotency_key IS NOT NULL;
