-- A run that reaches a terminal stage is announced once, by PostgreSQL itself: whichever
-- writer moved it (the receiver, the maintainer, a cancellation, any process, any
-- version), NOTIFY is part of the same transaction, so the announcement is sent when and
-- only when the move commits, and never for a run that was already terminal. Scheduler
-- pods LISTEN and wake their waiters (?wait on a run or a tag's summary). The WHEN clause
-- is evaluated in the executor: rows that do not finish cost no function call.
-- Payload: algorithm, id and tag, separated by tabs (none of them can hold one).
CREATE FUNCTION runs_announce_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nexus_finished',
                      NEW.algorithm || E'\t' || NEW.id::text || E'\t' || COALESCE(NEW.tag, ''));
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_announce_finished AFTER UPDATE ON runs FOR EACH ROW
WHEN (OLD.lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING')
      AND NEW.lifecycle_stage IN ('COMPLETED', 'FAILED', 'SCHEDULING_FAILED',
                                  'DEADLINE_EXCEEDED', 'CANCELLED'))
EXECUTE FUNCTION runs_announce_finished();
