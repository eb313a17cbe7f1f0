"""Kubernetes clusters, through kubernetes-asyncio (the only module that imports it).

A :class:`ShardClient` is one cluster reached through a kubeconfig file (or the in-cluster
service account). kubernetes-asyncio loads the configuration, authenticates (tokens, client
certificates, exec plugins; the client loads expiring credentials again, see
:meth:`ShardClient._fresh_credentials`) and owns the connection pool; Nexus uses it
*raw*: requests go through ``ApiClient.call_api(..., _preload_content=False)`` and answers
are parsed with orjson into plain dicts, because model deserialisation costs ~100 µs per
object and Nexus never needs the models. The client's aiohttp session is rebuilt with
``trust_env`` off: proxy look-ups on every request halve its throughput.

Job creation, the hot path, posts pre-serialised bytes over the lean keep-alive client of
:mod:`nexus.core.httpcalls` (a quarter of aiohttp's CPU per call), with the TLS settings
and the (refreshed) credentials kubernetes-asyncio derived from the kubeconfig; through a
proxy it goes by aiohttp like every other call.

Answers are mapped to outcomes, not exceptions, where the caller decides per status
(:class:`CreateResult` for Jobs; :class:`Written` for the objects the maintainer keeps in
step on shards, where ``404``, ``409`` and ``422`` are answers, not failures); elsewhere a
429 raises :class:`ShardThrottled`, another 4xx :class:`ShardRejected`, and 5xx, timeouts
and connection errors :class:`ShardUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import aiohttp
import orjson
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config.kube_config import KubeConfigLoader

from nexus.core.config import ShardSettings
from nexus.core.errors import ShardRejected, ShardThrottled, ShardUnavailable
from nexus.core.httpcalls import CallFailed, HttpCalls, PreparedHeaders
from nexus.core.runs import record
from nexus.core.watchevents import BrokenEvent, Sift, sifted_event
from nexus.core.watchevents import WatchEvent as WatchEvent  # where callers have found it

log = logging.getLogger(__name__)

_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
_JSON = {"Content-Type": "application/json", "Accept": "application/json"}
_MAX_EVENT = 16 * 1024 * 1024
"""Longest watch event read (the API server's own limit on an object is 1.5 MiB)."""

REQUEST_TIMEOUT = ShardSettings.request_timeout
"""Seconds a call may take by default: the setting's default."""
WATCH_SECONDS = 300
"""How long a watch request lasts before it is resumed (the API server's own cap)."""

Propagation = Literal["Background", "Foreground", "Orphan"]
"""How Kubernetes deletes the pods of a deleted Job (``propagationPolicy``)."""
PROPAGATIONS: tuple[Propagation, ...] = get_args(Propagation)
DEFAULT_PROPAGATION: Propagation = "Background"
"""Delete the Job at once and its pods behind it, as ``kubectl delete`` does."""

CALL_ERRORS = (ShardUnavailable, ShardRejected, ShardThrottled)
"""What a call of :class:`ShardClient` raises when it fails: unreachable or 5xx, refused
(4xx), throttled (429). For callers that log any failure and go on."""


@dataclass(frozen=True, slots=True)
class Resource:
    """A kind of object in the API: where it lives and how it is named in URLs."""

    group: str  # "" for the core group
    version: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        where = (
            f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"
        )
        return f"{where}/{name}" if name else where


JOBS = Resource("batch", "v1", "jobs")
PODS = Resource("", "v1", "pods")
EVENTS = Resource("", "v1", "events")
SECRETS = Resource("", "v1", "secrets")
CONFIG_MAPS = Resource("", "v1", "configmaps")
TEMPLATES = Resource("science.sneaksanddata.com", "v1", "nexusalgorithmtemplates")
WORKGROUPS = Resource("science.sneaksanddata.com", "v1", "nexusalgorithmworkgroups")
SCHEDULES = Resource("science.sneaksanddata.com", "v1", "nexusschedules")


@record
class CreateResult:
    """What a shard said to a Job creation."""

    status: int
    uid: str | None = None
    message: str = ""
    retry_after: float = 0.0

    @property
    def created(self) -> bool:
        """The Job exists now: created by this call (201) or an earlier one (409)."""
        return self.status in (200, 201, 202, 409)


@dataclass(frozen=True, slots=True)
class Written:
    """What a shard said to a create, replace or delete of an object.

    ``status`` is the HTTP status: 200/201 done (``object`` is the stored object, or the
    deletion's Status), 404 not there, 409 already exists (create) or changed meanwhile /
    a precondition failed (replace, delete), 422 refused as invalid (``message`` says why).
    Other failures raise, as every call of :class:`ShardClient` does.
    """

    status: int
    object: dict[str, Any] | None = None
    message: str = ""

    @property
    def done(self) -> bool:
        return self.status < 300


_ANSWERS = frozenset({404, 409, 422})
"""Statuses a write of an object returns as a :class:`Written` rather than raising."""


@dataclass(frozen=True, slots=True)
class Listing:
    items: list[dict[str, Any]]
    resource_version: str
    next_page: str | None


class ResourceExpired(Exception):
    """A watch's resourceVersion is too old (410 Gone): relist, then watch again."""


CREDENTIALS_CHECK = 30.0
"""Seconds between looks at whether a shard's credentials need loading again."""
MAX_RETRY_AFTER = 60.0
"""Longest wait a shard's Retry-After can impose; the next 429 asks again."""


def _retry_after(headers: Mapping[str, str]) -> float:
    """Seconds the server asks to wait, 0 to :data:`MAX_RETRY_AFTER` (1 when it says
    nothing usable; names in lower case: aiohttp's headers match any case, the lean
    client's are lower case)."""
    try:
        seconds = float(headers.get("retry-after", "1"))
    except ValueError:
        return 1.0
    if math.isnan(seconds):
        return 1.0
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _tls_context(configuration: Configuration) -> ssl.SSLContext:
    """The TLS settings kubernetes-asyncio's own connections use (its ``rest`` module)."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.disable_strict_ssl_verification:
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def _message(body: bytes) -> str:
    """The message of a Status answer, or the start of any other body; it is recorded in a
    run's checkpoint, whose text cannot hold NUL characters."""
    try:
        status = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:500].decode(errors="replace")
    else:
        text = str(status.get("message", "")) if isinstance(status, dict) else str(status)
    return text.replace("\x00", "\ufffd")


_UID = re.compile(rb'"uid"\s*:\s*"([^"\\]{1,128})"')


def created_uid(answer: bytes) -> str | None:
    """The ``metadata.uid`` of a created object, from the API server's answer. The answer is
    the whole object (some kilobytes for a Job), read only for its uid: the uid is found in
    the top-level ``metadata``, which API servers write before ``spec`` (and its ``uid``
    before any ``ownerReferences``), without parsing the rest; an answer laid out otherwise
    is parsed whole."""
    metadata, spec = answer.find(b'"metadata"'), answer.find(b'"spec"')
    if metadata >= 0 and (spec < 0 or metadata < spec):
        found = _UID.search(answer, metadata, spec if spec >= 0 else len(answer))
        if found is not None:
            return found.group(1).decode()
    try:
        uid = orjson.loads(answer).get("metadata", {}).get("uid")
    except (orjson.JSONDecodeError, AttributeError):
        return None  # created all the same; the watch will tell the uid
    return uid if isinstance(uid, str) else None


class ShardClient:
    """One Kubernetes cluster, used without model (de)serialisation."""

    def __init__(
        self,
        name: str,
        api: ApiClient,
        namespace: str,
        timeout: float,
        credentials: KubeConfigLoader | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self._api = api
        self._credentials = credentials
        self._credentials_checked = time.monotonic()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._host: str = api.configuration.host or ""
        old = api.rest_client.pool_manager
        connector = old.connector
        old.detach()
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            read_bufsize=2**21,
            cookie_jar=aiohttp.DummyCookieJar(),  # the API server sets none; skip the jar
        )
        api.rest_client.pool_manager = self._session
        # what the client library adds to each request, for the requests made without it
        rest = api.rest_client
        self._connection: dict[str, Any] = {}
        if rest.proxy:
            self._connection["proxy"] = rest.proxy
        if rest.proxy_headers:
            self._connection["proxy_headers"] = rest.proxy_headers
        if rest.server_hostname:
            self._connection["server_hostname"] = rest.server_hostname
        self._calls: HttpCalls | None = None  # made on first use, in the running loop
        self._headers: tuple[tuple[str | None, str | None], Mapping[str, str]] | None = None
        """The bearer token and prefix, and the headers of Job creations made with them."""

    @classmethod
    async def from_kubeconfig(
        cls, name: str, path: Path, namespace: str, timeout: float = REQUEST_TIMEOUT
    ) -> ShardClient:
        configuration = Configuration()
        loader = await kube_config.load_kube_config(
            config_file=str(path), client_configuration=configuration, persist_config=False
        )
        configuration.connection_pool_maxsize = 256
        return cls(name, ApiClient(configuration), namespace, timeout, loader)

    @classmethod
    async def in_cluster(
        cls, name: str, namespace: str, timeout: float = REQUEST_TIMEOUT
    ) -> ShardClient:
        configuration = Configuration()
        kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        configuration.connection_pool_maxsize = 256
        return cls(name, ApiClient(configuration), namespace, timeout)

    async def close(self) -> None:
        if self._calls is not None:
            await self._calls.close()
        await self._api.close()

    def _lean(self) -> HttpCalls:
        if self._calls is None:
            configuration = self._api.configuration
            self._calls = HttpCalls(
                limit=configuration.connection_pool_maxsize or 64,
                timeout=self._timeout.total or REQUEST_TIMEOUT,
                tls=_tls_context(configuration) if self._host.startswith("https:") else None,
                server_hostname=configuration.tls_server_name,
            )
        return self._calls

    async def _fresh_credentials(self) -> None:
        """Credentials that expire (an exec plugin's or OIDC token, GCP's, a token file
        that is rotated) are loaded again from the kubeconfig every
        :data:`CREDENTIALS_CHECK` seconds; each loader runs its plugin or refresh only when
        its token is about to expire. A failure keeps the token in use."""
        if self._credentials is None:
            return
        now = time.monotonic()
        if now - self._credentials_checked < CREDENTIALS_CHECK:
            return
        self._credentials_checked = now  # before the await: concurrent calls do not wait
        try:
            await self._credentials.load_and_set(self._api.configuration)
        except Exception as exc:  # a plugin or an identity provider may raise anything
            log.warning("cannot refresh the credentials of shard %s: %s", self.name, exc)

    async def _auth_headers(self) -> Mapping[str, str]:
        """The headers of a Job creation, with the credentials in use, their lines encoded
        for the request once (:class:`PreparedHeaders`): made again only when
        the bearer token changes (a refresh), not with three coroutines of the client
        library per Job. A configuration with a refresh hook (in-cluster tokens) asks the
        library every time: its hook may change the token on any call. The client's
        default headers are those it was made with (nothing here changes them). The
        credentials are looked at only when due: no coroutine per Job to find they are not."""
        if (
            self._credentials is not None
            and time.monotonic() - self._credentials_checked >= CREDENTIALS_CHECK
        ):
            await self._fresh_credentials()
        configuration = self._api.configuration
        token = (
            configuration.api_key.get("BearerToken"),
            configuration.api_key_prefix.get("BearerToken"),
        )
        made = self._headers
        if made is not None and made[0] == token and configuration.refresh_api_key_hook is None:
            return made[1]
        headers = {**_JSON, **self._api.default_headers}
        await self._api.update_params_for_auth(headers, [], ["BearerToken"])
        prepared = PreparedHeaders(headers)
        self._headers = (token, prepared)
        return prepared

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, Any]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        await self._fresh_credentials()
        try:
            response: aiohttp.ClientResponse = await self._api.call_api(
                path,
                method,
                query_params=list(query),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout or self._timeout,
            )
        except (*_NETWORK_ERRORS, kube_config.ConfigException) as exc:
            # credentials that cannot be loaded now (a token file being rotated) are
            # trouble of the shard's, for a while, like the network's
            raise ShardUnavailable(f"shard {self.name}: {method} {path}: {exc!r}") from exc
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """The answer's JSON, ``None`` for 404; other failures raise."""
        response = await self._call(method, path, **kwargs)
        try:
            body = await response.read()
        except _NETWORK_ERRORS as exc:
            raise ShardUnavailable(f"shard {self.name}: {method} {path}: {exc!r}") from exc
        finally:
            response.release()
        self._raise_for(response, body, f"{method} {path}")
        if response.status == 404:
            return None
        try:
            result: dict[str, Any] = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ShardUnavailable(f"shard {self.name}: {method} {path}: not JSON") from exc
        return result

    def _raise_for(self, response: aiohttp.ClientResponse, body: bytes, what: str) -> None:
        status = response.status
        if status < 400 or status == 404:
            return
        message = f"shard {self.name}: {what}: {status} {_message(body)}"
        if status == 429:
            raise ShardThrottled(message, retry_after=_retry_after(response.headers))
        if status >= 500:
            raise ShardUnavailable(message)
        raise ShardRejected(message, status=status, reason=_message(body))

    # -- jobs ------------------------------------------------------------------------------

    async def create_job(self, body: bytes) -> CreateResult:
        """POST a serialised Job; the status decides, nothing is raised for 4xx/5xx."""
        url = self._host + JOBS.path(self.namespace)
        found: Mapping[str, str]
        try:
            headers = await self._auth_headers()
            if "proxy" in self._connection:
                async with self._session.post(
                    url, data=body, headers=headers, timeout=self._timeout, **self._connection
                ) as response:
                    answer = await response.read()
                    status, found = response.status, response.headers
            else:
                # creating it twice is harmless (409), so a stale connection is retried
                status, answer, found = await self._lean().call(
                    "POST", url, body, headers, idempotent=True
                )
        except (*_NETWORK_ERRORS, CallFailed, kube_config.ConfigException) as exc:
            # credentials that cannot be loaded now (a token file being rotated, an exec
            # plugin failing) are the shard's trouble, not the run's: retried like 5xx
            raise ShardUnavailable(f"shard {self.name}: create job: {exc!r}") from exc
        retry_after = _retry_after(found) if status == 429 else 0.0
        if status in (200, 201, 202):
            return CreateResult(status, uid=created_uid(answer))
        return CreateResult(status, message=_message(answer), retry_after=retry_after)

    async def delete_job(self, name: str, propagation: Propagation = DEFAULT_PROPAGATION) -> bool:
        """Delete Job ``name``; whether it existed."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        found = await self._json(
            "DELETE",
            JOBS.path(self.namespace, name),
            query=[("propagationPolicy", propagation)],
            body=body,
        )
        return found is not None

    # -- generic writes (the configuration copies) -----------------------------------------

    async def _write(
        self, method: str, path: str, body: dict[str, Any], content_type: str = "application/json"
    ) -> Written:
        response = await self._call(method, path, body=body, content_type=content_type)
        try:
            answer = await response.read()
        except _NETWORK_ERRORS as exc:
            raise ShardUnavailable(f"shard {self.name}: {method} {path}: {exc!r}") from exc
        finally:
            response.release()
        if response.status in _ANSWERS:
            return Written(response.status, message=_message(answer))
        self._raise_for(response, answer, f"{method} {path}")
        try:
            stored = orjson.loads(answer)
        except orjson.JSONDecodeError as exc:
            raise ShardUnavailable(f"shard {self.name}: {method} {path}: not JSON") from exc
        return Written(response.status, stored if isinstance(stored, dict) else None)

    async def create_object(
        self, resource: Resource, body: dict[str, Any], namespace: str | None = None
    ) -> Written:
        """POST ``body`` (a plain dict, sent as it is) into ``namespace``."""
        return await self._write("POST", resource.path(namespace or self.namespace), body)

    async def replace_object(
        self, resource: Resource, body: dict[str, Any], namespace: str | None = None
    ) -> Written:
        """PUT ``body`` over the object of its name; a ``metadata.resourceVersion`` in it
        makes the write conditional (409 when the object changed since)."""
        name = body["metadata"]["name"]
        return await self._write("PUT", resource.path(namespace or self.namespace, name), body)

    async def patch_status(
        self, resource: Resource, name: str, status: dict[str, Any], namespace: str | None = None
    ) -> Written:
        """Merge ``status`` into the object's ``status`` subresource (a CRD declaring one):
        nothing else of the object changes."""
        path = f"{resource.path(namespace or self.namespace, name)}/status"
        return await self._write(
            "PATCH", path, {"status": status}, content_type="application/merge-patch+json"
        )

    async def delete_object(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        uid: str | None = None,
    ) -> Written:
        """DELETE ``name`` (its dependents in the background); with ``uid``, only that
        very object: one created since under the same name is left alone (409)."""
        body: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": DEFAULT_PROPAGATION,
        }
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        return await self._write("DELETE", resource.path(namespace or self.namespace, name), body)

    # -- generic reads and watches ---------------------------------------------------------

    async def get(
        self, resource: Resource, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        return await self._json("GET", resource.path(namespace or self.namespace, name))

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 500,
        page: str | None = None,
    ) -> Listing:
        """One page of objects (``next_page`` continues), with the list's resourceVersion."""
        query: list[tuple[str, Any]] = [("limit", limit)]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if page:
            query.append(("continue", page))
        where = resource.path(namespace or self.namespace)
        answer = await self._json("GET", where, query=query)
        if answer is None:  # the resource type is not served (e.g. a CRD not installed)
            raise ShardRejected(
                f"shard {self.name}: GET {where}: 404 not found", status=404, reason="NotFound"
            )
        meta = answer.get("metadata") or {}
        return Listing(
            answer.get("items") or [],
            str(meta.get("resourceVersion", "")),
            meta.get("continue") or None,
        )

    def _event(
        self, text: bytes, start: int, end: int, resource: Resource, sift: Sift | None
    ) -> WatchEvent | None:
        """The event of the line ``text[start:end]`` of a watch (``None``: blank, or
        declined by ``sift``); a broken line or an ``ERROR`` event raises."""
        try:
            event = sifted_event(text, sift, start, end)
        except BrokenEvent as exc:
            raise ShardUnavailable(f"shard {self.name}: watch {resource.plural}: {exc}") from exc
        if event is not None and event.type == "ERROR":
            status = event.object
            if status.get("code") == 410:
                raise ResourceExpired(f"shard {self.name}: {status.get('message')}")
            raise ShardUnavailable(f"shard {self.name}: watch error: {status.get('message')}")
        return event

    async def list_all(self, resource: Resource, **kwargs: Any) -> Listing:
        """Every object, following pages; the resourceVersion is the first page's."""
        first = await self.list(resource, **kwargs)
        items, page = list(first.items), first.next_page
        while page:
            more = await self.list(resource, page=page, **kwargs)
            items += more.items
            page = more.next_page
        return Listing(items, first.resource_version, None)

    async def watch(
        self,
        resource: Resource,
        resource_version: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = WATCH_SECONDS,
        sift: Sift | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes after ``resource_version`` until the server ends the watch.

        Raises :class:`ResourceExpired` when the version is too old to resume from.
        With ``sift`` (:mod:`nexus.core.watchevents`), each event's object is read for its
        ``status`` first: an event the sift declines is not read further nor yielded (so it
        never advances a resumed watch's version either), and the others come with their
        ``metadata`` and ``status`` but without their ``spec``. It must only decline what
        its caller would ignore; ``BOOKMARK`` and ``ERROR`` events are always read, so a
        quiet watch still resumes from a recent version.
        """
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", timeout_seconds),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        # A total, not a per-read, limit: the server ends the watch after timeout_seconds,
        # and a per-read timer would be rescheduled on every packet of a busy stream.
        timeout = aiohttp.ClientTimeout(
            total=timeout_seconds + 30, sock_connect=self._timeout.total
        )
        response = await self._call(
            "GET", resource.path(namespace or self.namespace), query=query, timeout=timeout
        )
        try:
            if response.status == 410:
                raise ResourceExpired(f"shard {self.name}: {resource.plural} at {resource_version}")
            if response.status == 404:  # _raise_for lets 404 through: it means "no object"
                raise ShardRejected(
                    f"shard {self.name}: watch {resource.plural}: 404 not found",
                    status=404,
                    reason="NotFound",
                )
            if response.status >= 400:
                self._raise_for(response, await response.read(), f"watch {resource.plural}")
            # Lines are found in each chunk as it came (memchr), and read where they lie:
            # only a line cut by a chunk's end is copied. Not by a generator of lines: a
            # busy watch brings many events per chunk, and each step of one costs.
            parts: list[bytes] = []  # the start of a line cut by the end of a chunk
            cut = 0
            async for chunk in response.content.iter_any():
                begin = 0
                if parts:
                    newline = chunk.find(b"\n")
                    if newline < 0:
                        parts.append(chunk)
                        cut += len(chunk)
                        if cut > _MAX_EVENT:
                            raise ValueError(f"a watch event longer than {_MAX_EVENT} bytes")
                        continue
                    parts.append(chunk[:newline])
                    line, parts, cut = b"".join(parts), [], 0
                    event = self._event(line, 0, len(line), resource, sift)
                    if event is not None:
                        yield event
                    begin = newline + 1
                while (newline := chunk.find(b"\n", begin)) >= 0:
                    if newline > begin:  # a broken line raises BrokenEvent, a ValueError
                        event = sifted_event(chunk, sift, begin, newline)
                        if event is not None:
                            if event.type == "ERROR":
                                self._event(chunk, begin, newline, resource, sift)  # raises
                            yield event
                    begin = newline + 1
                if begin < len(chunk):
                    parts.append(chunk[begin:])
                    cut = len(chunk) - begin
                    if cut > _MAX_EVENT:
                        raise ValueError(f"a watch event longer than {_MAX_EVENT} bytes")
            if parts:
                line = b"".join(parts)  # cut off: fails to parse, a broken event
                self._event(line, 0, len(line), resource, sift)
        except (*_NETWORK_ERRORS, ValueError) as exc:  # ValueError: a line over the buffer
            raise ShardUnavailable(f"shard {self.name}: watch {resource.plural}: {exc!r}") from exc
        finally:
            response.close()  # an unfinished stream must not go back to the pool


async def open_shards(directory: Path, namespace: str, timeout: float) -> dict[str, ShardClient]:
    """A client for every ``<shard>.kubeconfig`` in ``directory``."""
    clients: dict[str, ShardClient] = {}
    try:
        for path in sorted(directory.glob("*.kubeconfig")):  # noqa: ASYNC240 (start-up only)
            name = path.name.removesuffix(".kubeconfig")
            clients[name] = await ShardClient.from_kubeconfig(name, path, namespace, timeout)
    except Exception:
        for client in clients.values():
            await client.close()
        raise
    return clients


async def open_controller(kubeconfig: Path | None, namespace: str, timeout: float) -> ShardClient:
    """A client for the controller cluster (templates and workgroups): through
    ``kubeconfig``, or the in-cluster service account when it is ``None``."""
    if kubeconfig is not None:
        return await ShardClient.from_kubeconfig("controller", kubeconfig, namespace, timeout)
    return await ShardClient.in_cluster("controller", namespace, timeout)
