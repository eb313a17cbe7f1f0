-- When the JWT that carried a caller's stored rights was issued: a write changes the row
-- only when its JWT was issued no earlier, so the most recently issued JWT's rights stay,
-- whichever pod writes last (an older JWT still valid, used later, does not overwrite).
-- Rows written before this column existed count as issued before any JWT.
ALTER TABLE caller_rights ADD COLUMN issued timestamptz NOT NULL DEFAULT '-infinity';
