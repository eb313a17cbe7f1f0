"""What an algorithm container is told about its run, and what it says back (DESIGN §3).

:class:`RunContext` reads the arguments (``--sas-uri``, ``--request-id``) and the
``NEXUS__*`` environment once; the rest are the pieces :class:`nexus_sdk.algorithm.Run` and
:class:`~nexus_sdk.algorithm.AsyncRun` share, so the two cannot drift apart: the bodies and
headers of reports, the credential and idempotency keys of child runs, and what one attempt
of a call gave (an answer, or a reason to try again).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from nexus_sdk.calls import RunSpec
from nexus_sdk.errors import ContractError
from nexus_sdk.models import ParentRequest, Submitted
from nexus_sdk.retrying import RETRYABLE_STATUSES, Attempts, retry_after_seconds

INPUT_NOT_FOUND = "InputNotFound"
"""The cause of a run whose input is not in storage when its container reads it."""
TIMEOUT = 30.0
"""Seconds for one request to Nexus or object storage (each attempt)."""
JSON = "application/json"


@dataclass(frozen=True)
class RunContext:
    """What the container is told about its run (arguments and environment)."""

    algorithm: str
    request_id: str
    input_url: str
    receiver_url: str
    run_token: str
    result_upload_url: str
    parent_request_id: str | None = None
    parent_algorithm: str | None = None
    scheduler_url: str | None = None
    """Where child runs are submitted (absent on schedulers that do not say)."""
    run_credential: str | None = None
    """The bearer credential of child runs: they belong to this run's caller."""
    inline_limit: int | None = None
    """The largest result the receiver takes inline, in bytes (absent: none is sent)."""
    input_content: bytes | None = None
    """The input itself, when the Job carries it (``NEXUS__INPUT``, small inline inputs):
    then it is not fetched from ``input_url``."""
    attempt: int | None = None
    """Which attempt of the run this container is (``NEXUS__ATTEMPT``: 1, or more once the
    run was retried); a failure names it, so that a template that retries algorithm
    failures can retry exactly this attempt."""

    @classmethod
    def from_environment(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> RunContext:
        env = os.environ if env is None else env
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--sas-uri", required=True)
        parser.add_argument("--request-id", required=True)
        args, _ = parser.parse_known_args(argv)
        limit = env.get("NEXUS__RESULT_INLINE_LIMIT", "")
        attempt = env.get("NEXUS__ATTEMPT", "")
        content = env.get("NEXUS__INPUT")
        try:
            return cls(
                algorithm=env["NEXUS__ALGORITHM_NAME"],
                request_id=args.request_id,
                input_url=args.sas_uri,
                receiver_url=env["NEXUS__RECEIVER_URL"].rstrip("/"),
                run_token=env["NEXUS__RUN_TOKEN"],
                result_upload_url=env["NEXUS__RESULT_UPLOAD_URL"],
                parent_request_id=env.get("NEXUS__PARENT_REQUEST_ID"),
                parent_algorithm=env.get("NEXUS__PARENT_ALGORITHM_NAME"),
                scheduler_url=env.get("NEXUS__SCHEDULER_URL") or None,
                run_credential=env.get("NEXUS__RUN_CREDENTIAL") or None,
                inline_limit=int(limit) if limit.isdigit() else None,
                input_content=None if content is None else content.encode(),
                attempt=int(attempt) if attempt.isdigit() and int(attempt) > 0 else None,
            )
        except KeyError as exc:
            raise ContractError(f"not started by Nexus: {exc.args[0]} is not set") from exc

    def input_not_found(self) -> dict[str, Any]:
        """The completion body of a run whose input is not in storage (reading it answered
        404): it expired, or the store lost it. The run fails saying so."""
        return self.failure(
            INPUT_NOT_FOUND,
            "the run's input is not in object storage (reading it answered 404): it expired"
            " or the store lost it",
        )

    def failure(self, cause: str, message: str) -> dict[str, Any]:
        """The completion body of a failure of this attempt."""
        body: dict[str, Any] = {"cause": cause, "message": message, "sasUri": None}
        if self.attempt is not None:
            body["attempt"] = self.attempt
        return body

    @property
    def completion_url(self) -> str:
        route = f"/algorithm/v1.2/complete/{self.algorithm}/requests/{self.request_id}"
        return self.receiver_url + route

    def children(self) -> tuple[str, str]:
        """Where and with which credential this run starts child runs."""
        if not self.scheduler_url or not self.run_credential:
            raise ContractError(
                "this run cannot start child runs: its scheduler gives no NEXUS__SCHEDULER_URL"
                " and NEXUS__RUN_CREDENTIAL"
            )
        return self.scheduler_url, self.run_credential

    @property
    def as_parent(self) -> ParentRequest:
        return {"requestId": self.request_id, "algorithmName": self.algorithm}

    def child_key(self, algorithm: str, place: int) -> str:
        return f"child:{self.algorithm}/{self.request_id}:{algorithm}:{place}"

    def report_headers(self) -> dict[str, str]:
        return {"Content-Type": JSON, "Authorization": f"Bearer {self.run_token}"}

    def encoded(self, result: Any) -> tuple[bytes, bool]:
        """The result's bytes, and whether it may travel inline."""
        if isinstance(result, bytes | bytearray):
            return bytes(result), False
        body = json.dumps(result).encode()
        return body, self.inline_limit is not None and len(body) <= self.inline_limit


def problem(method: str, url: str, response: httpx.Response | None, exc: Exception | None) -> str:
    where = f"{method} {url.split('?')[0]}"
    if response is not None:
        return f"{where} answered {response.status_code}: {response.text[:300]}"
    return f"{where} failed: {exc!r}"


def _transient(response: httpx.Response) -> bool:
    return response.status_code in RETRYABLE_STATUSES


@dataclass
class Outcome:
    """What one attempt of a call gave: an answer, or why it should be tried again."""

    response: httpx.Response | None = None
    error: Exception | None = None

    def delay(self, attempts: Attempts) -> float | None:
        if self.response is not None and not _transient(self.response):
            return None
        retry_after = None
        if self.response is not None:
            retry_after = retry_after_seconds(self.response.headers.get("Retry-After"))
        return attempts.next_delay(retry_after)


def child_specs(
    context: RunContext, algorithm: str, inputs: Iterable[Any], tag: str | None
) -> list[RunSpec]:
    return [
        RunSpec(p, tag, parent=context.as_parent, idempotency_key=context.child_key(algorithm, i))
        for i, p in enumerate(inputs)
    ]


def accepted(algorithm: str, outcomes: Sequence[Submitted]) -> list[str]:
    refused = [o for o in outcomes if not o.accepted]
    if refused:
        first = refused[0]
        raise ContractError(
            f"{len(refused)} child runs of {algorithm} were refused; the first (input"
            f" {first.index}): {first.error}: {first.message}"
        )
    return [str(o.request_id) for o in outcomes]
