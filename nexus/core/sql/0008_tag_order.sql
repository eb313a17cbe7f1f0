-- Listings by tag page in keyset order (received_at, id) (nexus/core/listings.py): the
-- index serves every page as one range scan, and the counts of a summary. It replaces
-- runs_by_tag, which it covers (one index less to maintain on every insert).
CREATE INDEX runs_by_tag_order ON runs (algorithm, tag, received_at, id) WHERE tag IS NOT NULL;
DROP INDEX runs_by_tag;
