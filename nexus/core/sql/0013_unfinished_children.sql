-- Unfinished child runs, by age: the maintainer's sweep finds those whose parent was
-- cancelled while they were not (the scheduler that cancelled the parent died first:
-- maintainer.cascading) by walking this index, which holds only the children that have not
-- finished, and probing each one's parent by its key.
CREATE INDEX runs_unfinished_children ON runs (last_modified)
    WHERE parent IS NOT NULL AND lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING');
