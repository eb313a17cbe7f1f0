-- A run's stage is checked by a CHECK constraint instead of a foreign key to run_stages.
--
-- The foreign key made every insert and every stage change run a query on run_stages and
-- lock the stage's row there (FOR KEY SHARE): about a third of PostgreSQL's work per
-- transition, measured with batches of 4 to 32 runs. A CHECK is evaluated on the row
-- itself. run_stages stays the list the transition table refers to; the two lists are
-- kept equal by a test.
--
-- Adding the constraint reads the whole table once, inside the migration's transaction:
-- writes to runs wait for it (0.13 s for a million runs, measured).
ALTER TABLE runs DROP CONSTRAINT runs_lifecycle_stage_fkey;
ALTER TABLE runs ADD CONSTRAINT runs_lifecycle_stage_known CHECK (lifecycle_stage IN (
    'NEW', 'BUFFERED', 'RUNNING',
    'COMPLETED', 'FAILED', 'SCHEDULING_FAILED', 'DEADLINE_EXCEEDED', 'CANCELLED'
));
