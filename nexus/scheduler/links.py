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
from nexus.scheduler.jobs import RunLinks
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

    def job_links(
        self,
        run: Checkpoint,
        shard: str,
        *,
        result_inline_limit: int,
        input_content: str | None,
    ) -> RunLinks:
        """What ``run``'s Job carries: its input URL, a presigned PUT for its result valid
        until its deadline (plus a margin), its receiver, its run token, and where (the
        public URL) and with what credential it starts children as its caller, valid as
        long as the PUT. Made together, for
        every Job: the run's id is formatted and its deadline read once, not once a link."""
        algorithm, run_id = run.algorithm, str(run.id)
        deadline = run.applied_configuration.get("deadlineSeconds", DEFAULT_DEADLINE_SECONDS)
        seconds = float(deadline) + self._margin
        payloads, signer = self.payloads, self.signer
        return RunLinks(
            input_url=self.input_url(run),
            result_upload_url=payloads.presign_put(payloads.result_key(algorithm, run_id), seconds),
            receiver_url=self._receivers.get(shard, self._receiver),
            run_token=signer.run_token(algorithm, run_id),
            result_inline_limit=result_inline_limit,
            scheduler_url=self._public,
            run_credential=signer.run_credential(
                algorithm, run_id, run.caller, int(time.time() + seconds)
            ),
            input_content=input_content,
        )
