-- An announcement of a finished run carries what its waiters are answered with (stage,
-- whether a result is kept inline, result location, failure cause and details, as a JSON
-- array after the tag), so that a pod answers them without reading the run again. When
-- that would not fit in a notification (8000 bytes), the run is announced as before
-- (algorithm, id and tag only) and its waiters' pod reads it. Pods of a version before
-- this one read the array as part of the tag: their waiters on a tag's summary are then
-- answered at their S, with the counts as they stand, until they are replaced.
CREATE OR REPLACE FUNCTION runs_announce_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    announcement text := NEW.algorithm || E'\t' || NEW.id::text || E'\t' || COALESCE(NEW.tag, '');
    answer text := json_build_array(NEW.lifecycle_stage, NEW.result_inline IS NOT NULL,
                                    NEW.result_uri, NEW.algorithm_failure_cause,
                                    NEW.algorithm_failure_details)::text;
BEGIN
    IF octet_length(announcement) + octet_length(answer) < 7900 THEN
        announcement := announcement || E'\t' || answer;
    END IF;
    PERFORM pg_notify('nexus_finished', announcement);
    RETURN NULL;
END
$$;
