"""Runs written by raw SQL, as any writer of the database may: no store, no checks of ours."""

from __future__ import annotations

import uuid

import asyncpg


async def insert_run_at(conn: asyncpg.Connection, run_id: uuid.UUID, stage: str) -> None:
    """A run of ``echo`` with ``run_id``, inserted straight into ``stage``."""
    await conn.execute(
        "INSERT INTO runs (algorithm, id, lifecycle_stage, caller, received_by_host,"
        " applied_configuration, payload_valid_for, payload_inline, api_version)"
        " VALUES ('echo', $1, $2, 'c', 'h', '{}', '1 hour', '\\x7b7d', 'v1.2')",
        run_id,
        stage,
    )
