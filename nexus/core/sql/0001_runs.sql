-- Checkpoints: one row per run, keyed by (algorithm, id). See nexus/core/runs.py.

CREATE TABLE run_stages (
    stage    text PRIMARY KEY,
    terminal boolean NOT NULL
);
INSERT INTO run_stages VALUES
    ('NEW', false), ('BUFFERED', false), ('RUNNING', false),
    ('COMPLETED', true), ('FAILED', true), ('SCHEDULING_FAILED', true),
    ('DEADLINE_EXCEEDED', true), ('CANCELLED', true);

-- Every move a checkpoint may make; the store's UPDATEs and the guard trigger both use it.
CREATE TABLE run_transitions (
    from_stage text NOT NULL REFERENCES run_stages,
    to_stage   text NOT NULL REFERENCES run_stages,
    PRIMARY KEY (from_stage, to_stage)
);
INSERT INTO run_transitions VALUES
    ('NEW', 'BUFFERED'), ('NEW', 'SCHEDULING_FAILED'), ('NEW', 'DEADLINE_EXCEEDED'),
    ('NEW', 'CANCELLED'),
    ('BUFFERED', 'BUFFERED'), ('BUFFERED', 'RUNNING'), ('BUFFERED', 'COMPLETED'),
    ('BUFFERED', 'FAILED'), ('BUFFERED', 'SCHEDULING_FAILED'),
    ('BUFFERED', 'DEADLINE_EXCEEDED'), ('BUFFERED', 'CANCELLED'),
    ('RUNNING', 'RUNNING'), ('RUNNING', 'COMPLETED'), ('RUNNING', 'FAILED'),
    ('RUNNING', 'SCHEDULING_FAILED'), ('RUNNING', 'DEADLINE_EXCEEDED'),
    ('RUNNING', 'CANCELLED');

CREATE TABLE runs (
    algorithm                 text        NOT NULL,
    id                        uuid        NOT NULL,
    lifecycle_stage           text        NOT NULL REFERENCES run_stages,
    caller                    text        NOT NULL,
    received_by_host          text        NOT NULL,
    received_at               timestamptz NOT NULL DEFAULT now(),
    last_modified             timestamptz NOT NULL DEFAULT now(),
    sent_at                   timestamptz,
    applied_configuration     jsonb       NOT NULL,
    configuration_overrides   jsonb,
    payload_valid_for         interval    NOT NULL,
    payload_uri               text,
    payload_inline            bytea,
    result_uri                text,
    algorithm_failure_cause   text,
    algorithm_failure_details text,
    content_hash              text,
    tag                       text,
    api_version               text        NOT NULL,
    job_uid                   text,
    parent                    jsonb,
    shard                     text,
    attempts                  integer     NOT NULL DEFAULT 0,
    idempotency_key           text,
    PRIMARY KEY (algorithm, id),
    CHECK (payload_uri IS NOT NULL OR payload_inline IS NOT NULL OR lifecycle_stage <> 'BUFFERED')
);

-- Results by tag.
CREATE INDEX runs_by_tag ON runs (algorithm, tag) WHERE tag IS NOT NULL;
-- The same Idempotency-Key from the same caller names one run (keys expire after 24 h by
-- being cleared, see the maintainer).
CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (caller, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Sweeps look only at unfinished runs: a small partial index however large the table grows.
CREATE INDEX runs_unfinished ON runs (lifecycle_stage, last_modified)
    WHERE lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING');
-- Retention walks finished runs by age; rows arrive in time order, so BRIN is tiny.
CREATE INDEX runs_by_received_at ON runs USING brin (received_at);

-- No writer may move a terminal run, nor make a move the table above does not allow.
CREATE FUNCTION runs_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.lifecycle_stage IS DISTINCT FROM OLD.lifecycle_stage
       OR NEW.result_uri IS DISTINCT FROM OLD.result_uri
       OR NEW.algorithm_failure_cause IS DISTINCT FROM OLD.algorithm_failure_cause
       OR NEW.algorithm_failure_details IS DISTINCT FROM OLD.algorithm_failure_details THEN
        IF NOT EXISTS (SELECT 1 FROM run_transitions
                       WHERE from_stage = OLD.lifecycle_stage
                         AND to_stage = NEW.lifecycle_stage) THEN
            RAISE EXCEPTION 'run %/% may not move from % to %',
                OLD.algorithm, OLD.id, OLD.lifecycle_stage, NEW.lifecycle_stage
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    NEW.last_modified := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER runs_guard BEFORE UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION runs_guard();
