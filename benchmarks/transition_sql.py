"""Instructions PostgreSQL spends per run that a group-committed transition finishes,
counted with callgrind inside PostgreSQL itself: its triggers, its NOTIFY, its WAL.

    .venv/bin/python benchmarks/transition_sql.py [--runs 1600] [--batch 16] [--before 14]
        [--inline | --late-dispatch | --lifecycle [--early N]] [--statements REV] [--keep DIR]

A throwaway PostgreSQL (as the tests use) gets two databases: one with every migration of
this tree, one with migrations 1..``--before`` only (the schema before a change of its
triggers), each filled with ``--runs`` BUFFERED runs per variant. The server is then
stopped and each variant runs as one ``postgres --single`` session under
``valgrind --tool=callgrind``, with the store's own connection settings: the store's
``TRANSITION`` statement, prepared once and executed for ``--batch`` runs at a time (each
its own transaction, as group commit sends them), moving every run to COMPLETED with a
result location (``--inline``: with an inline result instead). The variants: the earlier
schema, this tree's, and this tree's with its UPDATE triggers disabled (what announcing
and guarding cost); a session that only prepares the statement gives the start-up cost
that is taken off. With ``--late-dispatch`` the runs are COMPLETED first (not counted)
and the counted statements are instead the dispatcher's RUNNING write with its Job's
facts, refused, the facts kept: what most runs cost when their completion outruns that
write (one statement, TRANSITION_KEEPING_JOBS, or the refused TRANSITION and then
RECORD_SENT in a tree that has no such statement). ``--lifecycle`` counts every
write of a run instead, as the system makes them under load, batch by batch: its insert,
then for one run in ``--early`` (3; 1: every run, as at 800 runs/s end to end, where most
RUNNING writes land first) the RUNNING write and the completion, for the rest the
completion and the refused RUNNING write (--keep DIR keeps each variant's profile and
session for callgrind_annotate). ``--statements REV`` has the earlier
schema's variant send the statements of revision REV (its ``nexus/core/statements.py``)
instead of this tree's.
Single-user mode has no listener, no autovacuum and no other session,
so a figure repeats within about 2 %; CPU seconds of a busy shared machine do not.
Prints a line per variant, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import new_run

from nexus.core.checkpoints import PLAN_SETTINGS, _insert_row
from nexus.core.migrations import apply_migrations, migrations
from nexus.core.runs import NewRun
from nexus.core.statements import INSERT
from nexus_dev.servers.services import LocalPostgres

PARAMETERS = ", ".join(
    [
        "text",
        "text",
        "text",
        *["text[]"] * 4,
        "text",
        "text",
        "timestamptz[]",
        "int[]",
        "bytea[]",
        "text",
        "text",
    ]
)
"""The types of the store's TRANSITION statement's parameters, $1 to $14 (a 15th, text, for
TRANSITION_KEEPING_JOBS)."""
SENT_PARAMETERS = "text[], uuid[], text[], text[], timestamptz[], int[]"
"""The types of RECORD_SENT's parameters (the facts of a refused RUNNING write, sent after
it by trees before TRANSITION_KEEPING_JOBS)."""
SILENT = (
    "ALTER TABLE runs DISABLE TRIGGER runs_announce_finished;"
    " ALTER TABLE runs DISABLE TRIGGER runs_guard"
)


def one_line(sql: str) -> str:
    """``sql`` as one line (single-user mode ends a command at a newline)."""
    lines = (line for line in sql.splitlines() if not line.strip().startswith("--"))
    return " ".join(line.strip() for line in lines if line.strip())


def statements(revision: str | None) -> ModuleType:
    """The store's statements module of ``revision`` (``None``: this tree's)."""
    if revision is None:
        from nexus.core import statements as current

        return current
    text = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "show", f"{revision}:nexus/core/statements.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader(f"statements_{revision}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(text, f"{revision}:nexus/core/statements.py", "exec"), module.__dict__)
    return module


async def fill(
    dsn: str, count: int, completed: bool = False, lifecycle: bool = False
) -> list[NewRun]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.set_type_codec(
            "jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads, format="text"
        )
        runs = [new_run() for _ in range(count)]
        if lifecycle:  # inserted by the counted session, tagged as end_to_end.py tags them
            return [replace(run, tag=f"slot-{i // 100}") for i, run in enumerate(runs)]
        columns: list[list[object]] = [[] for _ in range(15)]
        for run in runs:
            for column, value in zip(columns, _insert_row(run), strict=True):
                column.append(value)
        await conn.fetch(INSERT, *columns, len(runs))
        if completed:  # finished before the dispatcher's write (not counted)
            await conn.execute(
                "UPDATE runs SET lifecycle_stage = 'COMPLETED', result_uri = 's3://bucket/r'"
                " WHERE id = ANY($1::uuid[])",
                [run.id for run in runs],
            )
    finally:
        await conn.close()
    return sorted(runs, key=lambda r: r.id.int)  # as group commit sorts a batch


async def prepare(
    dsn: str, before: int, runs: int, completed: bool, lifecycle: bool
) -> dict[str, tuple[str, list[NewRun]]]:
    """The databases and runs of each variant, by name."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE DATABASE earlier")
    finally:
        await conn.close()
    earlier = dsn.rsplit("/", 1)[0] + "/earlier"
    conn = await asyncpg.connect(earlier)
    try:
        for version, _, sql in migrations():
            if version <= before:
                await conn.execute(sql)
    finally:
        await conn.close()
    await apply_migrations(dsn)
    current = dsn.rsplit("/", 1)[1]
    return {
        "empty": (current, []),
        f"migrations 1..{before}": ("earlier", await fill(earlier, runs, completed, lifecycle)),
        "this tree": (current, await fill(dsn, runs, completed, lifecycle)),
        "this tree, triggers off": (current, await fill(dsn, runs, completed, lifecycle)),
    }


def session(
    runs: list[NewRun],
    batch: int,
    inline: bool,
    prelude: str,
    sql: ModuleType,
    late: bool,
    lifecycle: bool = False,
    early: int = 3,
) -> str:
    lines = [prelude] if prelude else []
    lines.append(f"PREPARE t({PARAMETERS}) AS {one_line(sql.TRANSITION)}")
    keeping = getattr(sql, "TRANSITION_KEEPING_JOBS", None)
    if (late or lifecycle) and keeping is not None:
        lines.append(f"PREPARE k({PARAMETERS}, text) AS {one_line(keeping)}")
    elif late or lifecycle:
        lines.append(f"PREPARE s({SENT_PARAMETERS}) AS {one_line(sql.RECORD_SENT)}")
    if lifecycle:
        lines.append(f"PREPARE i({INSERT_PARAMETERS}) AS {one_line(INSERT)}")
        steps = lifecycle_steps(runs, batch, keeping is not None, early)
        return "\n".join(lines + steps) + "\n"
    for start in range(0, len(runs), batch):
        chunk = runs[start : start + batch]
        if late:  # the dispatcher's RUNNING write, refused: the run finished meanwhile
            lines += dispatched(chunk, keeping is not None, refused=True)
        else:
            lines.append(completed(chunk, inline))
    return "\n".join(lines) + "\n"


def completed(chunk: list[NewRun], inline: bool = False) -> str:
    """The receiver's write of ``chunk``'s completions."""
    ids = ",".join(f"{r.id.int:032x}" for r in chunk)  # joined as the store joins them
    names = ",".join(r.algorithm for r in chunk)
    zeros = ",".join("0" for _ in chunk)
    stages = ",".join("COMPLETED" for _ in chunk)
    if inline:
        documents = ",".join(f"convert_to('{{\"requestId\": \"{r.id}\"}}', 'UTF8')" for r in chunk)
        uri, result = "NULL", f"ARRAY[{documents}]::bytea[]"
    else:
        uri, result = "'{" + ",".join("s3://bucket/result" for _ in chunk) + "}'", "NULL"
    return (
        f"EXECUTE t('{names}', '{ids}', '{stages}', NULL, {uri}, NULL, NULL,"
        f" NULL, NULL, NULL, '{{{zeros}}}', {result}, NULL, ',')"
    )


def dispatched(chunk: list[NewRun], keeping: bool, refused: bool) -> list[str]:
    """The dispatcher's RUNNING write of ``chunk`` with its Jobs' facts; when ``refused``
    (the runs finished meanwhile) in a tree without TRANSITION_KEEPING_JOBS, RECORD_SENT
    after it."""
    ids = ",".join(f"{r.id.int:032x}" for r in chunk)
    names = ",".join(r.algorithm for r in chunk)
    zeros = ",".join("0" for _ in chunk)
    stages = ",".join("RUNNING" for _ in chunk)
    uids = ",".join(f"uid-{r.id}" for r in chunk)
    shards = ",".join("shard-a" for _ in chunk)
    sent = "'{" + ",".join('"2026-12-07 04:00:00+00"' for _ in chunk) + "}'"
    ones = ",".join("1" for _ in chunk)
    facts = f"'{uids}', '{shards}', {sent}::timestamptz[], '{{{zeros}}}', NULL, '{ones}'"
    head = f"('{names}', '{ids}', '{stages}', NULL, NULL, NULL, NULL, {facts}, ','"
    if keeping:
        return [f"EXECUTE k{head}, '{','.join('t' for _ in chunk)}')"]
    lines = [f"EXECUTE t{head})"]
    if refused:  # RECORD_SENT (trees before TRANSITION_KEEPING_JOBS) took arrays
        listed = ",".join(str(r.id) for r in chunk)
        arrays = f"'{{{uids}}}', '{{{shards}}}', {sent}, '{{{ones}}}'"
        lines.append(f"EXECUTE s('{{{names}}}', '{{{listed}}}', {arrays})")
    return lines


INSERT_PARAMETERS = (
    "text[], uuid[], text[], text[], text[], jsonb[], jsonb[], interval[], text[], bytea[],"
    " text[], text[], text[], jsonb[], text[], int"
)
"""The types of the store's INSERT statement's parameters."""


def inserted(chunk: list[NewRun]) -> str:
    """The scheduler's insert of ``chunk`` (the store's row-by-row INSERT)."""

    def literal(value: object) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, bytes):
            return f"'\\x{value.hex()}'"
        if isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, timedelta):
            value = f"{value.total_seconds()} seconds"
        return "'" + str(value).replace("'", "''") + "'"

    types = INSERT_PARAMETERS.split(", ")
    columns = zip(*(_insert_row(run) for run in chunk), strict=True)
    arrays = [
        f"ARRAY[{', '.join(literal(v) for v in column)}]::{kind}"
        for column, kind in zip(columns, types, strict=False)
    ]
    return f"EXECUTE i({', '.join(arrays)}, {len(chunk)})"


def lifecycle_steps(runs: list[NewRun], batch: int, keeping: bool, early: int) -> list[str]:
    """Every write of ``runs`` as the system makes them under load, batch by batch: a
    batch is inserted; two batches later one of its runs in ``early`` is dispatched (their
    RUNNING write lands first); a batch later all of it completes; a batch later still the
    rest is dispatched, refused (their completion outran that write) with its Jobs' facts
    kept."""
    chunks = [runs[i : i + batch] for i in range(0, len(runs), batch)]
    lines = []
    for step in range(len(chunks) + 4):
        if step < len(chunks):
            lines.append(inserted(chunks[step]))
        if 0 <= step - 2 < len(chunks):
            lines += dispatched(chunks[step - 2][::early], keeping, refused=False)
        if 0 <= step - 3 < len(chunks):
            lines.append(completed(chunks[step - 3]))
        if 0 <= step - 4 < len(chunks):
            late = [r for i, r in enumerate(chunks[step - 4]) if i % early]
            lines += dispatched(late, keeping, refused=True)
    return lines


def counted(
    server: LocalPostgres, home: Path, name: str, database: str, text: str, keep: str | None
) -> int:
    """Instructions of one single-user session running ``text``."""
    script = home / f"{name.replace(' ', '_').replace(',', '')}.sql"
    script.write_text(text)
    os.chmod(script, 0o644)
    out = script.with_suffix(".callgrind")
    settings = ["fsync=off", "full_page_writes=off", "wal_level=minimal", "max_wal_senders=0"]
    settings += ["jit=off", *(f"{k}={v}" for k, v in PLAN_SETTINGS.items())]
    argv = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        str(server.bin_dir / "postgres"), "--single", "-D", str(server.data_directory),
        *(item for setting in settings for item in ("-c", setting)), database,
    ]  # fmt: skip
    run_as = server._run_as()
    if run_as is not None:
        argv = ["runuser", "-u", run_as.name, "--", *argv]
    with open(script) as stdin:
        done = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, cwd=home)
    errors = [line for line in done.stdout.splitlines() if "ERROR" in line]
    if errors:
        raise RuntimeError(f"{name}: {errors[:3]}")
    if keep is not None:  # the profile and its session, for callgrind_annotate
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, keep)
        shutil.copy(script, keep)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"{name}: no count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1600, help="runs finished per variant")
    parser.add_argument("--batch", type=int, default=16, help="runs per statement")
    parser.add_argument("--before", type=int, default=len(migrations()) - 1,
                        help="the earlier schema: migrations 1..N")  # fmt: skip
    parser.add_argument("--inline", action="store_true", help="inline results, no location")
    parser.add_argument(
        "--late-dispatch",
        action="store_true",
        help="count refused RUNNING writes keeping their facts instead",
    )
    parser.add_argument(
        "--lifecycle", action="store_true", help="count every write of a run instead"
    )
    parser.add_argument(
        "--early", type=int, default=3, metavar="N",
        help="--lifecycle: one run in N has its RUNNING write land before its completion",
    )  # fmt: skip
    parser.add_argument("--keep", metavar="DIR", help="keep each variant's profile in DIR")
    parser.add_argument("--statements", metavar="REV",
                        help="the earlier schema's variant sends REV's statements")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed")
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"nexus-bench-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o755)
    server = LocalPostgres(directory / "postgres")
    try:
        info = server.start()
        variants = asyncio.run(
            prepare(info.dsn, args.before, args.runs, args.late_dispatch, args.lifecycle)
        )
        earlier = statements(args.statements)
        server.stop()
        home = server.data_directory.parent
        totals = {}
        for name, (database, runs) in variants.items():
            prelude = SILENT if name.endswith("triggers off") else ""
            sql = earlier if name.startswith("migrations") else statements(None)
            text = session(
                runs, args.batch, args.inline, prelude, sql, args.late_dispatch, args.lifecycle,
                args.early,
            )  # fmt: skip
            totals[name] = counted(server, home, name, database, text, args.keep)
        per_run = {
            name: round((total - totals["empty"]) / args.runs)
            for name, total in totals.items()
            if name != "empty"
        }
        for name, figure in per_run.items():
            print(f"  {name:28} {figure:>9,} instructions per finished run")
    finally:
        server.stop()
        server.close()
        shutil.rmtree(directory, ignore_errors=True)
    figures = {"runs": args.runs, "batch": args.batch, "inline": args.inline,
               "late_dispatch": args.late_dispatch, "lifecycle": args.lifecycle,
               "early": args.early, "statements": args.statements}  # fmt: skip
    print(json.dumps({"benchmark": "transition_sql", **figures, "per_run": per_run}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
