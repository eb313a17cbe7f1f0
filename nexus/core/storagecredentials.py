"""The credentials presigned URLs and uploads are signed with, kept fresh off the hot path.

Object storage is reached with long-term keys from the settings, or with whatever the
default credential chain finds (:mod:`nexus.core.storage` asks it): environment, shared
config and profiles, ``credential_process``, web identity (EKS IRSA), container
credentials (ECS, EKS Pod Identity) and instance metadata. Most of those hand out
*temporary* credentials — a key, a secret and a session token that expire within hours —
and renew them by calling a process or an HTTP endpoint.

Presigning happens on every dispatch and every results read and must never wait for that.
So :class:`StorageCredentials` keeps a :class:`~nexus.core.sigv4.Signer` for the current
credentials, which the hot path reads as a plain attribute, and a background task
(:meth:`StorageCredentials.keep_fresh`) asks the chain every :data:`CHECK_INTERVAL`
seconds for its current credentials. The chain's refreshable credentials renew themselves
when asked within their advisory window (botocore's: 15 minutes before expiry; a failure
there keeps the old ones), asynchronously (aiobotocore runs ``credential_process`` as a
subprocess and fetches web identity, container and instance credentials over aiohttp), so
the event loop never blocks on them; the task then swaps in a signer for the new
credentials.

Guarantees:

* a presigned URL or an upload is signed with the newest credentials the chain has given,
  at most :data:`CHECK_INTERVAL` seconds after it gave them;
* a failed refresh never stops the task nor drops the credentials in use: it is logged,
  counted in ``nexus_storage_credential_refreshes_total{outcome="failed"}`` and tried again
  after a capped back-off, until the chain answers again (DESIGN invariant 5);
* the secret and the session token are never logged nor shown in a ``repr``.

A URL signed with temporary credentials stops working when they expire, whatever its own
validity says (AWS refuses an expired session token): see docs/credentials.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import Counter

from nexus.core.sigv4 import Signer
from nexus.core.waiting import Backoff

log = logging.getLogger(__name__)

CHECK_INTERVAL = 60.0
"""Seconds between asking the chain for its current credentials. botocore renews
temporary credentials from 15 minutes before they expire (and must from 10 minutes before):
asking every minute lands well inside that window, and costs a clock reading when there is
nothing to renew."""

RETRY_BASE = 1.0
"""Seconds before the first retry of a failed refresh; doubles up to :data:`CHECK_INTERVAL`."""

REFRESHES = Counter(
    "nexus_storage_credential_refreshes_total",
    "Refreshes of temporary object-storage credentials, by outcome (rotated: new "
    "credentials are in use; failed: the chain could not renew them, the old ones stay)",
    ["outcome"],
)


class FrozenCredentials(Protocol):
    """One consistent set of credentials (botocore's ``ReadOnlyCredentials``)."""

    @property
    def access_key(self) -> str | None: ...
    @property
    def secret_key(self) -> str | None: ...
    @property
    def token(self) -> str | None: ...


class CredentialSource(Protocol):
    """Credentials that may renew themselves when asked (aiobotocore's credentials)."""

    method: str

    async def get_frozen_credentials(self) -> FrozenCredentials: ...


class StorageCredentials:
    """The signer of the current credentials, and the task that keeps them current."""

    def __init__(
        self,
        signer: Signer,
        source: CredentialSource | None = None,
        *,
        method: str = "",
        check_interval: float = CHECK_INTERVAL,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.signer = signer
        """Signs with the current credentials; read on the hot path, replaced on rotation."""
        self.method = method or (source.method if source is not None else "static")
        """Where the credentials come from: ``static`` for keys from the settings, else
        botocore's name of the provider (``env``, ``assume-role-with-web-identity``,
        ``container-role``, ``iam-role``, ``custom-process``...)."""
        self._source = source
        self._interval = check_interval
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def from_source(
        cls,
        source: CredentialSource,
        region: str,
        *,
        check_interval: float = CHECK_INTERVAL,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> StorageCredentials:
        """Credentials that follow ``source``: its current ones now, renewed by
        :meth:`start`'s task. Errors of the first fetch propagate."""
        signer = _signer(await source.get_frozen_credentials(), region)
        return cls(signer, source, check_interval=check_interval, sleep=sleep)

    @property
    def refreshable(self) -> bool:
        """Whether these credentials expire and are renewed by the background task."""
        return self._source is not None

    def start(self) -> None:
        """Keep the credentials fresh in the background until :meth:`close`."""
        if self._source is not None and self._task is None:
            self._task = asyncio.create_task(self.keep_fresh(), name="storage-credentials")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> bool:
        """Ask the chain for its current credentials (it renews them inside its window)
        and sign with them from now on; ``True`` when they changed. Errors propagate."""
        if self._source is None:
            return False
        current = self.signer
        renewed = _signer(await self._source.get_frozen_credentials(), current.region)
        if renewed == current:  # the same key, secret and token
            return False
        self.signer = renewed
        REFRESHES.labels("rotated").inc()
        log.info("object storage credentials renewed", extra={"method": self._source.method})
        return True

    async def keep_fresh(self) -> None:
        """Refresh every :data:`CHECK_INTERVAL` seconds; after a failure, sooner (capped
        back-off), for as long as it takes. Runs until cancelled."""
        failures = 0
        retry = Backoff(first=RETRY_BASE, cap=self._interval)
        while True:
            await self._sleep(retry.delay(failures) if failures else self._interval)
            try:
                await self.refresh()
            except Exception as exc:  # the chain raises many kinds; the task outlives them all
                failures += 1
                REFRESHES.labels("failed").inc()
                log.warning(
                    "cannot renew object storage credentials; the current ones stay in use",
                    extra={"method": self.method, "failures": failures, "error": repr(exc)},
                )
            else:
                if failures:
                    log.info(
                        "object storage credentials can be renewed again",
                        extra={"method": self.method, "failures": failures},
                    )
                failures = 0


def _signer(frozen: FrozenCredentials, region: str) -> Signer:
    return Signer(
        frozen.access_key or "", frozen.secret_key or "", region, "s3", frozen.token or ""
    )
