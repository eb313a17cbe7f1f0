-- Ticks of NexusSchedules (nexus/scheduler/schedules.py): one row per schedule and tick,
-- claimed before its run is submitted, naming the run's request id. The primary key makes
-- each tick start exactly one run, whichever scheduler pods tick, however often they
-- restart: a second claim finds the first row, and submitting its request id again finds
-- the run.
CREATE TABLE schedule_ticks (
    schedule   text        NOT NULL,
    tick       timestamptz NOT NULL,
    algorithm  text        NOT NULL,
    request_id uuid        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    outcome    text,
    PRIMARY KEY (schedule, tick)
);
