-- The children of a run (a request's parentRequest), found by their parent's id, so that
-- cancelling a parent finds and cancels every run below it (nexus.scheduler.cancelling)
-- with an index probe per level instead of a scan. Only child runs are in the index.
CREATE INDEX runs_by_parent ON runs ((parent->>'requestId')) WHERE parent IS NOT NULL;
