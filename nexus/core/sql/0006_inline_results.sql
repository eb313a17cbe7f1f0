-- Small results kept with their checkpoint (DESIGN §3): the completion that makes a run
-- COMPLETED may carry the result document itself, written by the same UPDATE. A nullable
-- column without a default is added without rewriting the table. Retention deletes the
-- row, and the result with it.
ALTER TABLE runs ADD COLUMN result_inline bytea;
