"""Object storage for run inputs and results (the only module that imports aiobotocore).

Layout inside the configured bucket (and prefix)::

    inputs/algorithm=<name>/<request id>     the buffered algorithmParameters (JSON)
    results/algorithm=<name>/<request id>    the default result location

Nexus stores *keys* (as ``s3://bucket/key``), never presigned URLs: a URL is presigned when
it is handed out — to a container when its Job is built, to a client on each results read —
so a stored reference never expires, each at the address its holder reaches storage by
(``presign_endpoint_url`` for containers, ``client_presign_endpoint_url`` for clients).
Presigning is on the hot path (every dispatch, every results read), so it uses the
project's SigV4 signer (:mod:`nexus.core.sigv4`, checked byte for byte against botocore's)
at ~20 µs instead of botocore's ~140 µs.

The maintainer pages through the inputs (:meth:`PayloadStore.list_page`) to delete those
left without a run (:mod:`maintainer.orphans`); the timestamps of a listing, one per
object, are parsed with :meth:`datetime.fromisoformat`, not dateutil.

Uploads are on the hot path too (every run submitted with its input in storage):
:meth:`PayloadStore.put` sends the object to a URL presigned for the store's own endpoint,
over the kept-alive connections of :mod:`nexus.core.httpcalls` — 122-151 µs of CPU per
upload against aiobotocore's 1,210-1,590 µs, measured against the local SeaweedFS —
retrying a dropped connection or a 5xx answer twice. Downloads, deletions and bucket
set-up go through aiobotocore.

**Credentials.** Keys in the settings, or else botocore's default credential chain
(environment, shared config and profiles, ``credential_process``, web identity as EKS IRSA
provides it, container credentials as ECS and EKS Pod Identity provide them, instance
metadata), resolved once at start: the aiobotocore client and the signer share the one
credentials object, and :mod:`nexus.core.storagecredentials` keeps temporary ones fresh
in the background, so presigning reads a snapshot and never waits for a renewal.

**Addressing.** ``path`` puts the bucket in the path (``endpoint/bucket/key``), which every
S3 server serves; ``virtual`` puts it in the host name (``bucket.endpoint/key``), as AWS
recommends; ``auto`` is virtual on AWS (no ``endpoint_url``) and path elsewhere, as
botocore decides it for these endpoints. Presigned URLs, uploads and the aiobotocore
client use the same style.

Connection and server failures surface as :class:`StorageUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from contextlib import AsyncExitStack
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.httpsession import get_cert_path
from botocore.utils import parse_timestamp

from nexus.core import sigv4
from nexus.core.config import StorageSettings
from nexus.core.errors import ConfigError, StorageUnavailable
from nexus.core.httpcalls import CallFailed, HttpCalls
from nexus.core.outages import Outage
from nexus.core.storagecredentials import StorageCredentials
from nexus.core.waiting import Backoff

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

MAX_PRESIGN_SECONDS = sigv4.MAX_PRESIGN_SECONDS
_UPLOAD_ATTEMPTS = 3
_UPLOAD_RETRY = Backoff(first=0.1, cap=1.0)
"""Pauses between upload attempts: 0.1 s, then 0.2 s."""
_S3_ERROR = re.compile(rb"<(Code|Message)>([^<]{0,300})</")


class StoredObject(NamedTuple):
    key: str
    last_modified: datetime


class ObjectNames:
    """Where inputs and results live, and the references stored for them."""

    def __init__(self, settings: StorageSettings) -> None:
        self.bucket = settings.bucket
        self._prefix = settings.prefix
        self.inputs_prefix = f"{settings.prefix}inputs/"

    def input_key(self, algorithm: str, run_id: str) -> str:
        return f"{self.inputs_prefix}algorithm={algorithm}/{run_id}"

    def input_run(self, key: str) -> tuple[str, str] | None:
        """The (algorithm, run id) whose input :meth:`input_key` names ``key``; ``None``
        for a key laid out otherwise."""
        if not key.startswith(self.inputs_prefix):
            return None
        folder, _, run_id = key[len(self.inputs_prefix) :].partition("/")
        algorithm = folder.removeprefix("algorithm=")
        if not run_id or "/" in run_id or algorithm == folder or not algorithm:
            return None
        return algorithm, run_id

    def result_key(self, algorithm: str, run_id: str) -> str:
        return f"{self._prefix}results/algorithm={algorithm}/{run_id}"

    def uri(self, key: str) -> str:
        """The stored reference of an object of this bucket."""
        return f"s3://{self.bucket}/{key}"

    def key_of(self, uri: str) -> str | None:
        """The key of a reference made by :meth:`uri`; ``None`` for anything else."""
        prefix = f"s3://{self.bucket}/"
        return uri[len(prefix) :] if uri.startswith(prefix) else None

    def result_key_of(self, uri: str, algorithm: str, run_id: str) -> str | None:
        """The key of ``uri`` if it is the run's own result location, the one object of
        this bucket a result may name; ``None`` otherwise. The receiver refuses any other
        object of this bucket; this keeps a result stored before that from reaching one
        (to be presigned for the run's client, or deleted with the run)."""
        key = self.key_of(uri)
        return key if key == self.result_key(algorithm, run_id) else None


class PayloadStore(ObjectNames):
    """Inputs and results in one S3 bucket."""

    def __init__(
        self,
        client: S3Client,
        settings: StorageSettings,
        stack: AsyncExitStack,
        uploads: HttpCalls | None = None,
        credentials: StorageCredentials | None = None,
    ) -> None:
        super().__init__(settings)
        self.outage = Outage("s3", "object storage")
        self._timeout = settings.request_timeout
        self._client = client
        self._stack = stack
        self._uploads = uploads
        aws = f"https://s3.{settings.region}.amazonaws.com"
        self._store_endpoint = (settings.endpoint_url or aws).rstrip("/")
        self._endpoint = (settings.presign_endpoint_url or self._store_endpoint).rstrip("/")
        self._client_endpoint = (settings.client_presign_endpoint_url or self._endpoint).rstrip("/")
        self._region = settings.region
        self._virtual = _virtual_host(
            settings, (self._store_endpoint, self._endpoint, self._client_endpoint)
        )
        self.credentials = credentials or StorageCredentials(
            sigv4.Signer(settings.access_key_id, settings.secret_access_key, settings.region)
        )
        """What presigned URLs and uploads are signed with (see the module docstring)."""

    @classmethod
    async def open(cls, settings: StorageSettings) -> PayloadStore:
        """Resolve the credentials and open the clients. Raises :class:`ConfigError` when
        no credentials can be found or the addressing cannot work, and
        :class:`StorageUnavailable` when the chain cannot fetch them now."""
        stack = AsyncExitStack()
        try:
            return await cls._open(settings, stack)
        except BaseException:
            await stack.aclose()
            raise

    @classmethod
    async def _open(cls, settings: StorageSettings, stack: AsyncExitStack) -> PayloadStore:
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": settings.addressing_style},
            max_pool_connections=settings.max_connections,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=min(5.0, settings.request_timeout),
            read_timeout=settings.request_timeout,
        )
        options: dict[str, Any] = {"region_name": settings.region, "config": config}
        if settings.endpoint_url:
            options["endpoint_url"] = settings.endpoint_url
        session = get_session()
        session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=_timestamp
        )
        if settings.access_key_id:
            options["aws_access_key_id"] = settings.access_key_id
            options["aws_secret_access_key"] = settings.secret_access_key
            credentials = StorageCredentials(
                sigv4.Signer(settings.access_key_id, settings.secret_access_key, settings.region)
            )
        else:
            credentials = await _chain_credentials(session, settings.region)
            stack.push_async_callback(credentials.close)
        client = await stack.enter_async_context(session.create_client("s3", **options))
        https = (settings.endpoint_url or "https:").startswith("https:")
        # the certificates botocore trusts (AWS_CA_BUNDLE, a profile's ca_bundle, else
        # its bundle), so that uploads and downloads agree on what storage may present
        cafile = session.get_config_variable("ca_bundle") or get_cert_path(True)
        uploads = HttpCalls(
            limit=settings.max_connections,
            timeout=settings.request_timeout,
            tls=ssl.create_default_context(cafile=cafile) if https else None,
        )
        stack.push_async_callback(uploads.close)
        store = cls(client, settings, stack, uploads, credentials)
        credentials.start()
        return store

    async def close(self) -> None:
        await self._stack.aclose()

    # -- presigning ------------------------------------------------------------------------

    def presign_get(
        self,
        key: str,
        expires_in: float,
        *,
        for_client: bool = False,
        now: datetime | None = None,
    ) -> str:
        """A URL that reads ``key`` for ``expires_in`` seconds (1 s to 7 days) from ``now``,
        at the address of algorithm containers, or of API clients when ``for_client``."""
        endpoint = self._client_endpoint if for_client else self._endpoint
        return self._presign("GET", endpoint, key, expires_in, now)

    def presign_put(self, key: str, expires_in: float, *, now: datetime | None = None) -> str:
        """A URL at which an algorithm container writes ``key`` for ``expires_in`` seconds
        (1 s to 7 days) from ``now``."""
        return self._presign("PUT", self._endpoint, key, expires_in, now)

    def _presign(
        self, method: str, endpoint: str, key: str, expires_in: float, now: datetime | None
    ) -> str:
        seconds = max(1, min(int(expires_in), MAX_PRESIGN_SECONDS))
        return self.credentials.signer.presign_object(
            method,
            endpoint,
            self.bucket,
            key,
            expires_in=seconds,
            now=now,
            virtual_host=self._virtual,
        )

    # -- objects ---------------------------------------------------------------------------

    async def put(self, key: str, body: bytes, content_type: str = "application/json") -> None:
        calls = self._uploads
        if calls is None:
            raise StorageUnavailable(f"cannot store {key}: this store was not opened to upload")
        problem = ""
        loop = asyncio.get_running_loop()
        # a try is begun only within the timeout (each may then take all of it): a store
        # that does not answer holds the caller one timeout, not one per try
        give_up = loop.time() + self._timeout
        for attempt in range(_UPLOAD_ATTEMPTS):
            if attempt:
                pause = _UPLOAD_RETRY.delay(attempt)
                if loop.time() + pause >= give_up:
                    break
                await asyncio.sleep(pause)
            url = self.credentials.signer.presign_object(
                "PUT",
                self._store_endpoint,
                self.bucket,
                key,
                expires_in=int(self._timeout) * 2 + 60,
                virtual_host=self._virtual,
            )
            try:
                answer = await calls.call("PUT", url, body, {"Content-Type": content_type})
            except CallFailed as exc:
                problem = str(exc) or type(exc).__name__
                continue
            if answer.status < 300:
                self.outage.up()
                return
            found = dict(_S3_ERROR.findall(answer.body))
            detail = b": ".join(v for v in (found.get(b"Code"), found.get(b"Message")) if v)
            problem = f"{answer.status} {detail.decode(errors='replace')}".rstrip()
            if answer.status < 500 and answer.status not in (408, 429):
                raise StorageUnavailable(f"cannot store {key}: {problem}")  # no use retrying
        self.outage.down(problem)
        raise StorageUnavailable(f"cannot store {key}: {problem}")

    def _why(self, exc: BaseException) -> str:
        return str(exc) or f"no answer within {self._timeout:g} s"

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or ``None`` when there is no such object."""
        try:
            async with asyncio.timeout(self._timeout):  # botocore's retries included
                answer = await self._client.get_object(Bucket=self.bucket, Key=key)
                async with answer["Body"] as stream:
                    body = await stream.read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                self.outage.up()
                return None
            raise StorageUnavailable(f"cannot read {key}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:  # TimeoutError is an OSError
            self.outage.down(self._why(exc))
            raise StorageUnavailable(f"cannot read {key}: {self._why(exc)}") from exc
        self.outage.up()
        return body

    async def exists(self, key: str) -> bool:
        """Whether the object is there (a ``HEAD``: its bytes are not read)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise StorageUnavailable(f"cannot look for {key}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            self.outage.down(self._why(exc))
            raise StorageUnavailable(f"cannot look for {key}: {self._why(exc)}") from exc
        self.outage.up()
        return True

    async def delete(self, keys: list[str]) -> None:
        """Delete objects (absent ones are fine), 1,000 per request."""
        try:
            for start in range(0, len(keys), 1000):
                chunk = keys[start : start + 1000]
                async with asyncio.timeout(self._timeout):
                    await self._client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                    )
        except (BotoCoreError, ClientError, OSError) as exc:  # TimeoutError is an OSError
            raise StorageUnavailable(f"cannot delete objects: {self._why(exc)}") from exc

    async def list_page(self, prefix: str, after: str, limit: int) -> list[StoredObject]:
        """Up to ``limit`` (at most 1,000) objects whose keys start with ``prefix``, in key
        order, from the first key after ``after`` (``""``: from the start)."""
        options: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": limit}
        if after:
            options["StartAfter"] = after
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._client.list_objects_v2(**options)
        except ClientError as exc:
            raise StorageUnavailable(f"cannot list {prefix}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:  # TimeoutError is an OSError
            self.outage.down(self._why(exc))
            raise StorageUnavailable(f"cannot list {prefix}: {self._why(exc)}") from exc
        self.outage.up()
        return [StoredObject(o["Key"], o["LastModified"]) for o in answer.get("Contents", ())]

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (local and test set-ups)."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            # only "no such bucket" means create it: 403 (someone else's) or 5xx must not
            # look like success
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise StorageUnavailable(f"cannot use bucket {self.bucket}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailable(f"storage unavailable: {exc}") from exc
        try:
            if self._region == "us-east-1":  # S3 refuses a location constraint there
                await self._client.create_bucket(Bucket=self.bucket)
            else:
                await self._client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self._region},  # type: ignore[typeddict-item]
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise StorageUnavailable(f"cannot create bucket {self.bucket}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailable(f"storage unavailable: {exc}") from exc


def _timestamp(text: str) -> datetime:
    """A timestamp of an S3 answer: ISO 8601 ones (``2026-12-06T23:35:00.000Z``, one per
    object listed) in about a microsecond, the rest as botocore parses them (with
    dateutil, ~0.8 ms each: 70 % of the CPU a listing took)."""
    try:
        found = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        found = None
    if found is None or found.tzinfo is None:
        return parse_timestamp(text)
    return found


def _virtual_host(settings: StorageSettings, endpoints: tuple[str, ...]) -> bool:
    """Whether objects are addressed ``bucket.host/key``; :class:`ConfigError` when
    ``virtual`` is asked for and cannot work."""
    match settings.addressing_style:
        case "path":
            return False
        case "auto":  # on AWS, where every address is AWS's own
            custom = (
                settings.endpoint_url
                or settings.presign_endpoint_url
                or settings.client_presign_endpoint_url
            )
            return not custom and sigv4.virtual_host_problem(endpoints[0], settings.bucket) is None
        case "virtual":
            for endpoint in endpoints:
                problem = sigv4.virtual_host_problem(endpoint, settings.bucket)
                if problem is not None:
                    raise ConfigError(
                        f"NEXUS__STORAGE__ADDRESSING_STYLE: virtual does not work here: {problem}"
                    )
            return True


async def _chain_credentials(session: AioSession, region: str) -> StorageCredentials:
    """The default credential chain's credentials, followed as they renew."""
    try:
        found = await session.get_credentials()
        if found is None:
            raise ConfigError(
                "NEXUS__STORAGE__ACCESS_KEY_ID is empty and the default credential chain "
                "found no credentials (environment, profile, web identity, container or "
                "instance metadata); see docs/credentials.md"
            )
        credentials = await StorageCredentials.from_source(found, region)
    except (BotoCoreError, ClientError, OSError) as exc:
        raise StorageUnavailable(f"cannot get object storage credentials: {exc}") from exc
    kind: object = found  # the stubs do not know that the chain may return these
    if isinstance(kind, RefreshableCredentials):
        log.info(
            "object storage credentials are temporary and renewed in the background; a "
            "presigned URL stops working when the credentials it was signed with expire",
            extra={"method": credentials.method},
        )
    else:
        # long-term keys (environment, profile): nothing will ever renew them
        credentials = StorageCredentials(credentials.signer, method=credentials.method)
    return credentials
