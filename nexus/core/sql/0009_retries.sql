-- Retries by failure class (nexus/core/retrying.py): a run may have several attempts, each
-- a Job of its own. run_attempt is the current one (1 for the first); retries lists the
-- attempts that failed and were retried, with their causes; retry_at is when the current
-- attempt may be dispatched, when it must wait. Columns with constant defaults: no rewrite.
ALTER TABLE runs
    ADD COLUMN run_attempt integer     NOT NULL DEFAULT 1,
    ADD COLUMN retries     jsonb       NOT NULL DEFAULT '[]',
    ADD COLUMN retry_at    timestamptz;

-- The one way back from RUNNING to BUFFERED is a new attempt: the row's attempt number goes
-- up by one in the same UPDATE. It is not in run_transitions, so no ordinary transition
-- (which joins that table) can make it; the trigger lets it through only with the new
-- attempt. A failure, result or cause written over a BUFFERED or RUNNING run stays judged
-- by the list as before.
DROP TRIGGER runs_guard ON runs;
CREATE TRIGGER runs_guard BEFORE UPDATE ON runs FOR EACH ROW
WHEN ((NEW.lifecycle_stage IS DISTINCT FROM OLD.lifecycle_stage
       OR NEW.result_uri IS DISTINCT FROM OLD.result_uri
       OR NEW.algorithm_failure_cause IS DISTINCT FROM OLD.algorithm_failure_cause
       OR NEW.algorithm_failure_details IS DISTINCT FROM OLD.algorithm_failure_details)
      AND (OLD.lifecycle_stage, NEW.lifecycle_stage) NOT IN (
          ('NEW', 'BUFFERED'), ('NEW', 'SCHEDULING_FAILED'), ('NEW', 'DEADLINE_EXCEEDED'),
          ('NEW', 'CANCELLED'),
          ('BUFFERED', 'BUFFERED'), ('BUFFERED', 'RUNNING'), ('BUFFERED', 'COMPLETED'),
          ('BUFFERED', 'FAILED'), ('BUFFERED', 'SCHEDULING_FAILED'),
          ('BUFFERED', 'DEADLINE_EXCEEDED'), ('BUFFERED', 'CANCELLED'),
          ('RUNNING', 'RUNNING'), ('RUNNING', 'COMPLETED'), ('RUNNING', 'FAILED'),
          ('RUNNING', 'SCHEDULING_FAILED'), ('RUNNING', 'DEADLINE_EXCEEDED'),
          ('RUNNING', 'CANCELLED'))
      AND NOT (OLD.lifecycle_stage = 'RUNNING' AND NEW.lifecycle_stage = 'BUFFERED'
               AND NEW.run_attempt = OLD.run_attempt + 1))
EXECUTE FUNCTION runs_refuse_move();
