-- The guard against forbidden moves (0004, 0009) and the announcement of finished runs
-- (0010, 0012), cheaper per statement and per run, refusing and announcing the same.
--
-- Counted with callgrind in PostgreSQL itself (single-user mode, the store's TRANSITION
-- statement, batches of 16 runs moved to COMPLETED): 245,000 instructions per run, of
-- which the guard took 50,000 and the announcement 29,000.
--
-- The guard's WHEN clause listed the 17 allowed moves. PostgreSQL reads a trigger's WHEN
-- clause back from its stored node tree and prepares it once for every statement that
-- updates runs (stringToNode, ExecPrepareQual): 700,000 instructions a statement for that
-- list, whatever the number of rows. Its WHEN clause is now a short one that is false for
-- the moves the hot paths make (from BUFFERED or RUNNING to RUNNING or a finished stage)
-- and true for every forbidden move (from NEW or a finished stage, or to NEW or BUFFERED);
-- the function then judges the rare rest as before and refuses what it refused. It runs
-- AFTER the row is written, not BEFORE: a BEFORE row trigger has PostgreSQL lock and read
-- each updated row once more before the update; a refusal still fails the statement and
-- rolls the whole of it back.
--
-- The announcement ran PERFORM, a query of its own for every finished run (SPI: a plan
-- looked up, an executor started and shut down), and an IF and an assignment after its
-- declarations. The same announcement is now computed in the declarations' initial
-- values, simple expressions evaluated without the executor, and sent there (pg_notify
-- returns void, kept as text and never read).
CREATE OR REPLACE FUNCTION runs_refuse_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.lifecycle_stage IS DISTINCT FROM OLD.lifecycle_stage
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
                AND NEW.run_attempt = OLD.run_attempt + 1) THEN
        RAISE EXCEPTION 'run %/% may not move from % to %',
            OLD.algorithm, OLD.id, OLD.lifecycle_stage, NEW.lifecycle_stage
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER runs_guard ON runs;
CREATE TRIGGER runs_guard AFTER UPDATE ON runs FOR EACH ROW
WHEN (OLD.lifecycle_stage NOT IN ('BUFFERED', 'RUNNING')
      OR NEW.lifecycle_stage IN ('NEW', 'BUFFERED'))
EXECUTE FUNCTION runs_refuse_move();

CREATE OR REPLACE FUNCTION runs_announce_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head text := NEW.algorithm || E'\t' || NEW.id::text || E'\t' || COALESCE(NEW.tag, '');
    answer text := json_build_array(NEW.lifecycle_stage, NEW.result_inline IS NOT NULL,
                                    NEW.result_uri, NEW.algorithm_failure_cause,
                                    NEW.algorithm_failure_details)::text;
    sent text := pg_notify('nexus_finished',
                           CASE WHEN octet_length(head) + octet_length(answer) < 7900
                                THEN head || E'\t' || answer ELSE head END)::text;
BEGIN
    RETURN NULL;
END
$$;
