-- What a caller known only by its JWTs may run, as its JWT last said: a run's credential
-- starts children with its caller's rights, and a JWT caller's rights are in its JWTs,
-- which the run never sees (service tokens' rights are in every pod's configuration).
-- One row per such caller, written by the scheduler pod that sees new rights in a JWT,
-- before it serves the request that carried them.
CREATE TABLE caller_rights (
    caller     text PRIMARY KEY,
    algorithms text[] NOT NULL,
    weight     double precision,
    updated_at timestamptz NOT NULL DEFAULT now()
);
