"""The URLs a run hands out: its input, its result upload, its result, its receiver, and
where and as whom it starts child runs.

Every URL is made when it is handed out, never stored, so none expires before it is used:
inputs in object storage get a presigned GET valid for the run's ``payloadValidFor``;
inputs kept inline get a link to the scheduler signed with HMAC for as long; results get a
presigned PUT valid until the run's deadline (plus a margin) and, when read, a fresh
presigned GET — or, for a result kept with its checkpoint, a link to the scheduler signed
with HMAC for an hour (any scheduler pod checks it without a database read).
"""

from __future__ import annotations

import time

from nexus.core.runs import Checkpoint, RunResult
from nexus.core.signing import Signer
from nexus.core.storage import PayloadStore
from nexus.core.templates import DEFAULT_DEADLINE_SECONDS
from nexus.scheduler.settings import SchedulerSection

CONTENT_ROUTE = "/algorithm/v1.2/payload/{algorithm}/requests/{request_id}/content"
RESULT_CONTENT_ROUTE = "/algorithm/v1.2/results/{algorithm}/requests/{request_id}/content"
RESULT_READ_SECONDS = 3600.0
"""A result URL handed to a client is valid for an hour; asking again gives a new one."""


class Links:
    def __init__(self, payloads: PayloadStore, signer: Signer, settings: SchedulerSection) -> None:
        self.payloads = payloads
        self.signer = signer
        self._public = settings.public_url.rstrip("/")
        self._receiver = settings.receiver_url.rstrip("/")
        self._receivers = {k: v.rstrip("/") for k, v in settings.receiver_urls.items()}
        self._margin = settings.result_url_margin

    @property
    def public_url(self) -> str:
        """The scheduler's base URL as clients reach it (no trailing slash)."""
        return self._public

    def input_url(self, run: Checkpoint, *, for_client: bool = False) -> str:
        """Where the algorithm (or, ``for_client``, an API client) reads the run's input."""
        valid_for = run.payload_valid_for.total_seconds()
        key = self.payloads.key_of(run.payload_uri) if run.payload_uri else None
        if key is not None:
            return self.payloads.presign_get(key, valid_for, for_client=for_client)
        if run.payload_uri:  # an input stored elsewhere by reference
            return run.payload_uri
        path = CONTENT_ROUTE.format(algorithm=run.algorithm, request_id=run.id)
        return self._public + self.signer.sign_path(path, valid_for)

    def result_upload_url(self, run: Checkpoint) -> str:
        deadline = run.applied_configuration.get("deadlineSeconds", DEFAULT_DEADLINE_SECONDS)
        seconds = float(deadline) + self._margin
        return self.payloads.presign_put(
            self.payloads.result_key(run.algorithm, str(run.id)), seconds
        )

    def result_url(self, run: Checkpoint | RunResult) -> str | None:
        """A fresh URL of the run's result, if it has one."""
        if run.has_inline_result:
            path = RESULT_CONTENT_ROUTE.format(algorithm=run.algorithm, request_id=run.id)
            return self._public + self.signer.sign_path(path, RESULT_READ_SECONDS)
        if not run.result_uri:
            return None
        key = self.payloads.result_key_of(run.result_uri, run.algorithm, str(run.id))
        if key is not None:
            return self.payloads.presign_get(key, RESULT_READ_SECONDS, for_client=True)
        if self.payloads.key_of(run.result_uri) is not None:
            return None  # another object of the bucket, stored before such were refused
        return run.result_uri  # the algorithm reported a location of its own

    def receiver_url(self, shard: str) -> str:
        return self._receivers.get(shard, self._receiver)

    def run_token(self, run: Checkpoint) -> str:
        return self.signer.run_token(run.algorithm, str(run.id))

    @property
    def scheduler_url(self) -> str:
        """Where a running algorithm starts child runs."""
        return self._public

    def run_credential(self, run: Checkpoint) -> str:
        """The run's credential for starting children as its caller, valid until its
        deadline (plus the margin result uploads get)."""
        deadline = run.applied_configuration.get("deadlineSeconds", DEFAULT_DEADLINE_SECONDS)
        expires = int(time.time() + float(deadline) + self._margin)
        return self.signer.run_credential(run.algorithm, str(run.id), run.caller, expires)
