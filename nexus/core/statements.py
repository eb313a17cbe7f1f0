"""The SQL the checkpoint store runs, in one place to read and review.

Every statement is sent by the store (:mod:`nexus.core.checkpoints`, and its sweeps in
:mod:`nexus.core.sweeps`) as a prepared statement; the writes take array parameters
(``unnest``), so one statement serves a whole group-committed batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from nexus.core.runs import ALLOWED, Stage

TERMINAL_STAGES = "('COMPLETED', 'FAILED', 'SCHEDULING_FAILED', 'DEADLINE_EXCEEDED', 'CANCELLED')"

# Both inserts answer with one row: how many runs they inserted, and which, only when that
# is fewer than the batch ($16, $19: its size). A batch whose every run is new (nearly
# all) then costs no row per run to send, decode and look through.
INSERT = """
WITH inserted AS (
INSERT INTO runs (algorithm, id, lifecycle_stage, caller, received_by_host,
                  applied_configuration, configuration_overrides, payload_valid_for,
                  payload_uri, payload_inline, content_hash, tag, api_version, parent,
                  idempotency_key)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                     $6::jsonb[], $7::jsonb[], $8::interval[], $9::text[], $10::bytea[],
                     $11::text[], $12::text[], $13::text[], $14::jsonb[], $15::text[])
ON CONFLICT DO NOTHING
RETURNING id
)
SELECT count(*)::int AS n, CASE WHEN count(*) < $16::int THEN array_agg(id) END AS ids
FROM inserted
"""

# The same insert for a batch whose runs share a few shapes: everything but a run's own
# id, input, content hash and idempotency key (algorithm, caller, pod, applied
# configuration, …; the runs of one bulk submit have one shape). Each shape is sent, and
# its JSON parsed by PostgreSQL, once; each run names its shape by position (a nested loop
# over a handful of shapes: the store sends this only while they are few). A run's own
# columns that every run has come as one value each, not as arrays: the ids as 16 bytes
# each ($1), the shapes as a byte each ($2), the inline inputs end to end ($4) with each
# one's start (1-based, 0 for none) and length ($5, $6), the content hashes joined by
# commas ($7, empty for none). asyncpg checks every element of an array parameter against
# collections.abc (about a microsecond each), which made four arrays a tenth of a bulk
# submit's CPU; splitting these again is a few string operations per row for PostgreSQL.
INSERT_SHAPED = """
WITH inserted AS (
INSERT INTO runs (algorithm, id, lifecycle_stage, caller, received_by_host,
                  applied_configuration, configuration_overrides, payload_valid_for,
                  payload_uri, payload_inline, content_hash, tag, api_version, parent,
                  idempotency_key)
SELECT s.algorithm, encode(substr($1::bytea, r.n::int * 16 - 15, 16), 'hex')::uuid, s.stage,
       s.caller, s.host, s.applied, s.overrides, s.valid_for, r.uri,
       CASE WHEN r.start = 0 THEN NULL ELSE substr($4::bytea, r.start, r.length) END,
       r.hash, s.tag, s.api_version, s.parent, r.key
FROM unnest(string_to_array($5::text, ',')::int[], string_to_array($6::text, ',')::int[],
            string_to_array($7::text, ',', ''), $3::text[], $8::text[])
       WITH ORDINALITY AS r(start, length, hash, uri, key, n)
JOIN unnest($9::text[], $10::text[], $11::text[], $12::text[], $13::jsonb[], $14::jsonb[],
            $15::interval[], $16::text[], $17::text[], $18::jsonb[])
       WITH ORDINALITY AS s(algorithm, stage, caller, host, applied, overrides, valid_for,
                            tag, api_version, parent, n)
  ON s.n = get_byte($2::bytea, r.n::int - 1)
ON CONFLICT DO NOTHING
RETURNING id
)
SELECT count(*)::int AS n, CASE WHEN count(*) < $19::int THEN array_agg(id) END AS ids
FROM inserted
"""


# The same for a batch of one shape (single submits of one caller and template, a bulk
# submit): its columns as scalars, each made a one-element array by PostgreSQL. asyncpg
# checks an array parameter and each of its elements against collections.abc (about 1,700
# instructions a check), some 35 checks for a shape's ten one-element arrays: with the few
# runs a batch of single submits holds, that was several checks per run.
def _one_shape(statement: str) -> str:
    kinds = ("text", "text", "text", "text", "jsonb", "jsonb", "interval", "text", "text", "jsonb")
    for number, kind in enumerate(kinds, start=9):
        array = f"${number}::{kind}[]"
        assert statement.count(array) == 1, array
        statement = statement.replace(array, f"ARRAY[${number}::{kind}]")
    return statement


INSERT_ONE_SHAPE = _one_shape(INSERT_SHAPED)


IDEMPOTENT_MATCHES = """
SELECT r.caller, r.idempotency_key, r.id, r.algorithm, r.content_hash,
       r.configuration_overrides, r.tag, r.parent, r.payload_valid_for,
       r.received_at < now() - $3::interval AS expired
FROM runs r JOIN unnest($1::text[], $2::text[]) AS k(caller, key)
  ON r.caller = k.caller AND r.idempotency_key = k.key
"""


EXPIRE_KEYS = """
UPDATE runs r SET idempotency_key = NULL
FROM unnest($1::text[], $2::text[]) AS k(caller, key)
WHERE r.caller = k.caller AND r.idempotency_key = k.key AND r.received_at < now() - $3::interval
"""


# The runs are locked first, in key order: concurrent batches (dispatch, completions,
# cancellations) then always take their row locks in the same order and cannot deadlock,
# which they did when each UPDATE locked rows in the order its join happened to visit them.
# Rows are locked in the order of the arrays, which callers sort by key: two batches that
# share runs then take their locks in the same order and cannot deadlock each other. (A
# CTE that locks first and a join that updates after is no alternative: when a concurrent
# writer changes a row in between, PostgreSQL's recheck of the join can drop the row, and
# a transition that should apply silently does not.) For the same reason the allowed moves
# are an expression of the row's stage (MOVES), never a join on it: an UPDATE that waited
# for a row rechecks the new row against the rows it had joined, so a join would judge a
# cancel against the move it first matched (BUFFERED to CANCELLED) when the row has become
# RUNNING meanwhile, and drop it; an expression is evaluated again on the new row.
# The algorithms ($1) and target stages ($3) come as one text each, joined by a separator
# ($14) that none of them holds: asyncpg checks each element of an array parameter against
# collections.abc (about 2,400 instructions a str), and every change has both; so do the
# Job uids and shards ($8, $9: every change of a dispatched run has both), an empty one
# read as none (NULL), and the ids ($2, as 32 hex digits) and attempts expected ($13) joined
# by commas; for the
# same reason the attempts to add ($11) are NULL, not zeros, when no change adds one (a
# completion's). A row changed is answered with its change's position in the batch (n),
# one integer to decode instead of its algorithm and id.
# The seconds since the run was received, by the database's clock: the metrics' time from
# submission to a finished stage.
AGE = "extract(epoch FROM clock_timestamp() - r.received_at)::float8 AS age"


def _moves() -> str:
    """Whether run ``r`` may move to ``u.to_stage``: the moves of ``run_transitions``
    (which the guard trigger enforces, and tests keep equal to :data:`ALLOWED`), as a CASE
    over the target with the stages it may be reached from. It replaced a subquery of
    ``run_transitions`` per row, a sixth of PostgreSQL's instructions per transition."""
    # The usual moves' branch first (to COMPLETED, RUNNING, FAILED), each list in the
    # order of the stages (BUFFERED before RUNNING): a CASE stops at the first match.
    sources: dict[tuple[Stage, ...], list[Stage]] = {}
    for target in dict.fromkeys((Stage.COMPLETED, Stage.RUNNING, *Stage)):
        froms = tuple(s for s in Stage if (s, target) in ALLOWED)
        if froms:
            sources.setdefault(froms, []).append(target)
    branches = " ".join(
        f"WHEN u.to_stage IN ({_listed(targets)}) THEN r.lifecycle_stage IN ({_listed(froms)})"
        for froms, targets in sources.items()
    )
    return f"(CASE {branches} ELSE false END)"


def _listed(stages: Iterable[Stage]) -> str:
    return ", ".join(f"'{stage.value}'" for stage in stages)


MOVES = _moves()

_TRANSITION_FROM = """FROM unnest(string_to_array($1::text, $14::text),
            string_to_array($2::text, ',')::uuid[], string_to_array($3::text, $14::text),
            $4::text[], $5::text[], $6::text[], $7::text[],
            string_to_array($8::text, $14::text, ''), string_to_array($9::text, $14::text, ''),
            $10::timestamptz[], $11::int[], $12::bytea[],
            string_to_array($13::text, ',', '')::int[]{keep_column}) WITH ORDINALITY
     AS u(algorithm, id, to_stage, expect, result_uri, cause, details, job_uid, shard,
          sent_at, attempts, result_inline, at_attempt{keep_name}, n)
WHERE r.algorithm = u.algorithm AND r.id = u.id
  AND (u.at_attempt IS NULL OR r.run_attempt = u.at_attempt)
"""

TRANSITION = f"""
UPDATE runs r SET
    lifecycle_stage = u.to_stage,
    result_uri = COALESCE(u.result_uri, r.result_uri),
    result_inline = COALESCE(u.result_inline, r.result_inline),
    algorithm_failure_cause = COALESCE(u.cause, r.algorithm_failure_cause),
    algorithm_failure_details = COALESCE(u.details, r.algorithm_failure_details),
    job_uid = COALESCE(u.job_uid, r.job_uid),
    shard = COALESCE(u.shard, r.shard),
    sent_at = COALESCE(u.sent_at, r.sent_at),
    attempts = r.attempts + COALESCE(u.attempts, 0),
    last_modified = now()
{_TRANSITION_FROM.format(keep_column="", keep_name="")}\
  AND (u.expect IS NULL OR r.lifecycle_stage = u.expect) AND {MOVES}
RETURNING u.n::int, {AGE}
"""

# TRANSITION for a batch in which some changes keep their Job's facts when refused
# (Transition.keep_job: the dispatcher's RUNNING writes, $15 a 't' or 'f' per change,
# joined as $1 is): a run that another writer finished or failed while its Job was being
# created does not move, but gains the job_uid, shard and sent_at it lacks, in the same
# statement (it was a second statement, after the refusal, for most runs dispatched under
# load: their completion arrives before the RUNNING write). Its stage, result, failure and
# last_modified stay as they are (the guard lets such an update through), and a later
# attempt's run gains nothing from an earlier attempt's Job. A change that keeps facts is
# one to a stage its run is not in already, so "moved" is whether the row's stage is now
# the change's target; a run that kept facts is answered with its stage and attempt.
_MOVED = f"((u.expect IS NULL OR r.lifecycle_stage = u.expect) AND {MOVES})"


def _kept(column: str, given: str) -> str:
    return (
        f"{column} = CASE WHEN {_MOVED} THEN COALESCE(u.{given}, r.{column})"
        f" ELSE COALESCE(r.{column}, u.{given}) END"
    )


TRANSITION_KEEPING_JOBS = f"""
UPDATE runs r SET
    lifecycle_stage = CASE WHEN {_MOVED} THEN u.to_stage ELSE r.lifecycle_stage END,
    result_uri = COALESCE(u.result_uri, r.result_uri),
    result_inline = COALESCE(u.result_inline, r.result_inline),
    algorithm_failure_cause = COALESCE(u.cause, r.algorithm_failure_cause),
    algorithm_failure_details = COALESCE(u.details, r.algorithm_failure_details),
    {_kept("job_uid", "job_uid")},
    {_kept("shard", "shard")},
    {_kept("sent_at", "sent_at")},
    attempts = r.attempts + CASE WHEN {_MOVED} THEN COALESCE(u.attempts, 0) ELSE 0 END,
    last_modified = CASE WHEN {_MOVED} THEN now() ELSE r.last_modified END
{
    _TRANSITION_FROM.format(
        keep_column=", string_to_array($15::text, $14::text)::boolean[]", keep_name=", keep"
    )
}\
  AND ({_MOVED}
       OR (u.keep AND r.lifecycle_stage <> u.to_stage
           AND (r.job_uid IS NULL OR r.sent_at IS NULL OR r.shard IS NULL)))
RETURNING u.n::int, {AGE}, r.lifecycle_stage = u.to_stage AS moved, r.lifecycle_stage,
          r.run_attempt
"""


# A new attempt of one run (nexus/core/retrying.py): compare-and-set on the attempt number,
# so of every process that saw attempt $3 fail, one starts attempt $3 + 1 and the others
# change nothing. The failed attempt is appended to retries; a retry with more memory
# changes the memory of the configuration the next Job is made from. One row by key: the
# statement holds one lock and waits for no other, so it takes part in no lock cycle.
RETRY = """
UPDATE runs SET
    lifecycle_stage = 'BUFFERED',
    run_attempt = run_attempt + 1,
    retries = retries || jsonb_build_array($4::jsonb),
    applied_configuration = CASE WHEN $5::text IS NULL THEN applied_configuration
        ELSE jsonb_set(applied_configuration, '{memoryLimit}', to_jsonb($5::text)) END,
    retry_at = $6::timestamptz,
    job_uid = NULL,
    last_modified = now()
WHERE algorithm = $1 AND id = $2 AND run_attempt = $3
  AND lifecycle_stage IN ('BUFFERED', 'RUNNING')
RETURNING caller, COALESCE(shard, applied_configuration->>'shard') AS shard
"""


COLUMNS = """
algorithm, id, lifecycle_stage, caller, received_by_host, received_at, last_modified,
applied_configuration, payload_valid_for, payload_uri, payload_inline IS NOT NULL AS has_inline,
result_uri, algorithm_failure_cause, algorithm_failure_details, sent_at,
configuration_overrides, content_hash, tag, api_version, job_uid, parent, shard, attempts,
idempotency_key, result_inline IS NOT NULL AS has_inline_result, run_attempt, retries,
retry_at
"""


# Appended to a read by key: $3 is the caller whose runs the reader may see, or NULL for
# every caller's, and $4 the parent (JSON) of the only runs it may see, or NULL for any
# (nexus.core.visibility). The row is found by its key first; the caller and the parent
# are a filter on that one row, so a limited reader costs what an unlimited one does.
SEEN_BY = " AND ($3::text IS NULL OR caller = $3) AND ($4::text IS NULL OR parent = $4::jsonb)"


# COLUMNS with the applied configuration as its JSON text, for reads whose runs share
# one decoded configuration per text (CheckpointStore.get_many(shared=True)).
COLUMNS_SHARED = COLUMNS.replace(
    "applied_configuration,", "applied_configuration::text AS applied_configuration,"
)

RESULT_COLUMNS = (
    "algorithm, id, lifecycle_stage, result_uri, algorithm_failure_cause,"
    " algorithm_failure_details, result_inline IS NOT NULL AS has_inline_result"
)


# A tag's runs in keyset order (runs_by_tag_order): a page is one index range scan.
_TAG_PAGE = """
SELECT {columns}, received_at FROM runs
WHERE algorithm = $1 AND tag = $2 AND ($3::text IS NULL OR caller = $3)
  AND ($7::text IS NULL OR parent = $7::jsonb)
  AND (received_at, id) > ($4::timestamptz, $5::uuid)
ORDER BY received_at, id
LIMIT $6
"""
TAG_PAGE = _TAG_PAGE.format(columns=RESULT_COLUMNS)
TAG_PAGE_WITH_RESULTS = _TAG_PAGE.format(columns=f"{RESULT_COLUMNS}, result_inline")
"""The same page with the results kept inline themselves."""


TAG_COUNTS = """
SELECT lifecycle_stage, count(*) AS runs FROM runs
WHERE algorithm = $1 AND tag = $2 AND ($3::text IS NULL OR caller = $3)
  AND ($4::text IS NULL OR parent = $4::jsonb)
GROUP BY lifecycle_stage
"""


# The literal IN (...) lets the planner use the partial index runs_unfinished_by_age also
# under a generic plan of the prepared statement, where $1 alone proves nothing.
SWEEP_PAGE = """
SELECT algorithm, id, lifecycle_stage, received_at, last_modified, sent_at,
       COALESCE(shard, applied_configuration->>'shard') AS shard,
       (applied_configuration->>'deadlineSeconds')::float8 AS deadline_seconds,
       attempts, job_uid, payload_uri, payload_inline IS NOT NULL AS has_inline, run_attempt
FROM runs
WHERE lifecycle_stage = $1 AND lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING')
  AND last_modified < now() - $2::interval
  AND (last_modified, algorithm, id) > ($3::timestamptz, $4::text, $5::uuid)
ORDER BY lifecycle_stage, last_modified, algorithm, id
LIMIT $6
"""


# Unfinished children whose parent is CANCELLED, through runs_unfinished_children (only
# unfinished children are in it) and a key probe of each parent; the oldest change first.
CHILDREN_OF_CANCELLED = """
SELECT c.algorithm, c.id, c.lifecycle_stage, c.received_at, c.last_modified, c.sent_at,
       COALESCE(c.shard, c.applied_configuration->>'shard') AS shard,
       (c.applied_configuration->>'deadlineSeconds')::float8 AS deadline_seconds,
       c.attempts, c.job_uid, c.payload_uri, c.payload_inline IS NOT NULL AS has_inline,
       c.run_attempt, p.algorithm AS parent_algorithm, p.id AS parent_id,
       p.algorithm_failure_details AS parent_details
FROM runs c
JOIN runs p ON p.algorithm = c.parent->>'algorithmName'
           AND p.id = (c.parent->>'requestId')::uuid
WHERE c.parent IS NOT NULL AND c.lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING')
  AND p.lifecycle_stage = 'CANCELLED'
  AND c.last_modified < now() - $1::interval
ORDER BY c.last_modified
LIMIT $2
"""

# Candidates are read from the statement's snapshot; those another transaction has locked
# are skipped (SKIP LOCKED), to be tried again. Each candidate comes back once with
# applied = false and, if it was changed, once more with applied = true; rows not among
# the candidates were refused by their stage and are not returned. The change of every
# run travels with it through the CTEs, and each join probes runs by key, so the work
# grows with the batch, not with its square (the CTEs have no indexes).
TRANSITION_SKIP_LOCKED = f"""
WITH candidates AS (
    SELECT u.* FROM unnest(string_to_array($1::text, $14::text),
                           string_to_array($2::text, ',')::uuid[],
                           string_to_array($3::text, $14::text), $4::text[], $5::text[],
                           $6::text[], $7::text[], string_to_array($8::text, $14::text, ''),
                           string_to_array($9::text, $14::text, ''), $10::timestamptz[],
                           $11::int[], $12::bytea[],
                           string_to_array($13::text, ',', '')::int[])
        AS u(algorithm, id, to_stage, expect, result_uri, cause, details, job_uid, shard,
             sent_at, attempts, result_inline, at_attempt)
    JOIN runs r ON r.algorithm = u.algorithm AND r.id = u.id
    WHERE (u.expect IS NULL OR r.lifecycle_stage = u.expect)
      AND (u.at_attempt IS NULL OR r.run_attempt = u.at_attempt)
      AND {MOVES}
), locked AS MATERIALIZED (
    SELECT c.* FROM candidates c JOIN runs r ON r.algorithm = c.algorithm AND r.id = c.id
    FOR UPDATE OF r SKIP LOCKED
), updated AS (
    UPDATE runs r SET
        lifecycle_stage = u.to_stage,
        result_uri = COALESCE(u.result_uri, r.result_uri),
        result_inline = COALESCE(u.result_inline, r.result_inline),
        algorithm_failure_cause = COALESCE(u.cause, r.algorithm_failure_cause),
        algorithm_failure_details = COALESCE(u.details, r.algorithm_failure_details),
        job_uid = COALESCE(u.job_uid, r.job_uid),
        shard = COALESCE(u.shard, r.shard),
        sent_at = COALESCE(u.sent_at, r.sent_at),
        attempts = r.attempts + COALESCE(u.attempts, 0),
        last_modified = now()
    FROM locked u
    WHERE r.algorithm = u.algorithm AND r.id = u.id
      AND (u.expect IS NULL OR r.lifecycle_stage = u.expect)
      AND (u.at_attempt IS NULL OR r.run_attempt = u.at_attempt)
      AND {MOVES}
    RETURNING r.algorithm, r.id, {AGE}
)
SELECT algorithm, id, false AS applied, NULL::float8 AS age FROM candidates
UNION ALL
SELECT algorithm, id, true, age FROM updated
"""


# Inline inputs and results of the runs named, read together (a run not found is absent).
INLINE_PAYLOADS = """
SELECT r.algorithm, r.id, r.payload_inline AS content
FROM runs r JOIN unnest($1::text[], $2::uuid[]) AS k(algorithm, id)
  ON r.algorithm = k.algorithm AND r.id = k.id
"""
INLINE_RESULTS = """
SELECT r.algorithm, r.id, r.result_inline AS content
FROM runs r JOIN unnest($1::text[], $2::uuid[]) AS k(algorithm, id)
  ON r.algorithm = k.algorithm AND r.id = k.id
"""


# Served by the partial index runs_unfinished_by_age alone: finished runs are never read.
COUNT_UNFINISHED = """
SELECT lifecycle_stage, count(*) AS runs FROM runs
WHERE lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING')
GROUP BY lifecycle_stage
"""


# received_at is served by the BRIN index: rows arrive in time order.
EXPIRED_RUNS = f"""
SELECT algorithm, id, payload_uri, result_uri FROM runs
WHERE received_at < now() - $1::interval AND lifecycle_stage IN {TERMINAL_STAGES}
LIMIT $2
"""


# One probe of the primary key per pair: a page of the inputs crawl in one round trip.
EXISTING_RUNS = """
SELECT r.algorithm, r.id
FROM runs r JOIN unnest($1::text[], $2::uuid[]) AS k(algorithm, id)
  ON r.algorithm = k.algorithm AND r.id = k.id
"""


DELETE_FINISHED = f"""
DELETE FROM runs r USING unnest($1::text[], $2::uuid[]) AS k(algorithm, id)
WHERE r.algorithm = k.algorithm AND r.id = k.id AND r.lifecycle_stage IN {TERMINAL_STAGES}
RETURNING r.id
"""


CLEAR_KEYS = """
UPDATE runs SET idempotency_key = NULL
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM runs
    WHERE idempotency_key IS NOT NULL AND received_at < now() - $1::interval
    LIMIT $2))
RETURNING id
"""


# Every run below a parent (children, their children, …), depth-first by the index of
# 0007_runs_by_parent, each level one probe per run; a cycle cannot arise (a parent exists
# before its child) but the depth is bounded anyway. Only unfinished descendants are
# returned; finished ones are walked through, as their children may still run.
DESCENDANTS = f"""
WITH RECURSIVE tree(algorithm, id, depth) AS (
    SELECT $1::text, $2::uuid, 0
    UNION
    SELECT r.algorithm, r.id, t.depth + 1
    FROM tree t JOIN runs r
      ON r.parent->>'requestId' = t.id::text AND r.parent->>'algorithmName' = t.algorithm
    WHERE r.parent IS NOT NULL AND t.depth < $3
)
SELECT {COLUMNS} FROM runs
WHERE (algorithm, id) IN (SELECT algorithm, id FROM tree WHERE depth > 0)
  AND lifecycle_stage NOT IN {TERMINAL_STAGES}
"""
