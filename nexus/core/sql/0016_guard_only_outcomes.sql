-- The guard against forbidden moves (0015) calls its function only for an update that
-- changes a run's stage or outcome, as the function itself judged before.
--
-- Its WHEN clause was true for every update of a finished run: the dispatcher's write
-- that keeps a Job's facts on a run finished meanwhile (most runs under load: their
-- completion outruns that write) called the PL/pgSQL function for each such run, about
-- 26,000 instructions, only to find nothing to refuse. An update that changes none of the
-- stage, the result location and the failure cause and details moves nothing and was
-- never refused; the clause now says so after the test of the stages (false on the hot
-- paths' moves, which are then judged by that test alone, as before). The inline result
-- is not listed: the function never judged it.
DROP TRIGGER runs_guard ON runs;
CREATE TRIGGER runs_guard AFTER UPDATE ON runs FOR EACH ROW
WHEN ((OLD.lifecycle_stage NOT IN ('BUFFERED', 'RUNNING')
       OR NEW.lifecycle_stage IN ('NEW', 'BUFFERED'))
      AND (NEW.lifecycle_stage IS DISTINCT FROM OLD.lifecycle_stage
           OR NEW.result_uri IS DISTINCT FROM OLD.result_uri
           OR NEW.algorithm_failure_cause IS DISTINCT FROM OLD.algorithm_failure_cause
           OR NEW.algorithm_failure_details IS DISTINCT FROM OLD.algorithm_failure_details))
EXECUTE FUNCTION runs_refuse_move();
