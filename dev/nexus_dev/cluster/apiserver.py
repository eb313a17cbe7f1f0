"""The REST surface of a shard: Kubernetes API paths, verbs and answers.

Requests are routed by the path shapes of the real API server
(``/api/v1/namespaces/{ns}/pods/{name}/log``, ``/apis/{group}/{version}/{plural}``, ...)
and answered with the status codes and bodies kubernetes-asyncio expects: ``201`` with the
object on create, ``200`` with a ``…List`` (``metadata.resourceVersion``, ``continue``) on
list, a ``Status`` on every error. Every request but the probes and ``/metrics`` must carry
``Authorization: Bearer <the shard's token>`` (``401`` otherwise); every resource request
passes the emulated API Priority and Fairness first (:mod:`.fairness`).

Only the paths Nexus uses exist; anything else is ``404`` (unknown resources) or ``405``
(known resource, verb not served — e.g. creating a Pod directly: pods come from Jobs).
"""

from __future__ import annotations

import base64
import bisect
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from nexus.core.httpserver import Answer, HttpServer, Request
from nexus_dev.cluster import configdata, discovery, routing
from nexus_dev.cluster.deletion import GarbageCollector, choose_policy
from nexus_dev.cluster.events import EventRecorder
from nexus_dev.cluster.fairness import Fairness
from nexus_dev.cluster.kubelet import Kubelet
from nexus_dev.cluster.patching import apply_patch
from nexus_dev.cluster.routing import NoRoute, Params
from nexus_dev.cluster.selectors import selector_predicate
from nexus_dev.cluster.statuses import ApiError, new_uid, now_iso, random_suffix
from nexus_dev.cluster.store import Collection, Obj, ObjectStore, Resource
from nexus_dev.cluster.validation import check_name, default_job, validate_job
from nexus_dev.cluster.watchstreams import WatchSettings, open_watch

_JSON = "application/json"
_OPEN_PATHS = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})
_MAX_BODY = 8 * 1024 * 1024
_TEXT = "text/plain; charset=utf-8"
_NOT_FOUND = Answer(404, b"404: Not Found", _TEXT)
_NOT_ALLOWED = Answer(405, b"405: Method Not Allowed", _TEXT, {"Allow": "GET"})
Handler = Callable[[Request, Params], "Answer | Awaitable[None]"]


def _json(obj: Any, status: int = 200) -> Answer:
    return Answer(status, orjson.dumps(obj))


def error_response(error: ApiError) -> Answer:
    return Answer(error.code, error.body(), _JSON, error.headers or None)


def _body(request: Request) -> Any:
    raw = request.body
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError.bad_request(f"the body of the request is not valid JSON: {exc}") from exc


STATUS_SUBRESOURCE = frozenset({"nexusalgorithmtemplates"})
"""Custom resources whose CRD declares ``subresources: {status: {}}``."""


class ApiServer:
    """Handlers of one shard's API; :meth:`server` is the aiohttp server that runs them."""

    def __init__(
        self,
        *,
        store: ObjectStore,
        fairness: Fairness,
        registry: CollectorRegistry,
        token: str,
        collector: GarbageCollector,
        kubelet: Kubelet,
        recorder: EventRecorder,
        watch: WatchSettings,
    ) -> None:
        self.store = store
        self.fairness = fairness
        self.registry = registry
        self.authorization = f"Bearer {token}"
        self.collector = collector
        self.kubelet = kubelet
        self.recorder = recorder
        self.watch = watch
        self._namespace_uids: dict[str, str] = {}
        self._started = now_iso()
        self._handlers: dict[str, Handler] = {
            "version": self._version,
            "core_versions": self._core_versions,
            "groups": self._groups,
            "resources": self._resources,
            "metrics": self._metrics,
            "probe": self._probe,
            "namespace": self._namespace,
            "collection": self._collection,
            "item": self._item,
            "subresource": self._subresource,
        }

    def server(self) -> HttpServer:
        """The HTTP server that runs :meth:`handle` (:mod:`nexus.core.httpserver`)."""
        return HttpServer(self.handle, max_body=_MAX_BODY)

    def handle(self, request: Request) -> Answer | Awaitable[None]:
        """Authenticate, route (:mod:`.routing`) and answer one request (a watch streams)."""
        if (
            request.headers.get("authorization") != self.authorization
            and request.path not in _OPEN_PATHS
        ):
            return error_response(ApiError.unauthorized())
        try:
            name, params = routing.match(request.method, request.path)
        except NoRoute as missing:
            return _NOT_FOUND if missing.status == 404 else _NOT_ALLOWED
        try:
            return self._handlers[name](request, params)
        except ApiError as error:
            return error_response(error)

    # -- discovery -----------------------------------------------------------------------

    def _version(self, request: Request, params: Params) -> Answer:
        return _json(discovery.version_info())

    def _core_versions(self, request: Request, params: Params) -> Answer:
        return _json(discovery.core_versions(request.host))

    def _groups(self, request: Request, params: Params) -> Answer:
        return _json(discovery.group_list())

    def _probe(self, request: Request, params: Params) -> Answer:
        return Answer(200, b"ok", _TEXT)

    def _metrics(self, request: Request, params: Params) -> Answer:
        body = generate_latest(self.registry)
        return Answer(200, body, CONTENT_TYPE_LATEST)

    def _resources(self, request: Request, params: Params) -> Answer:
        listing = discovery.resource_list(params["group"], params["version"])
        if listing is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json(listing)

    def _namespace(self, request: Request, params: Params) -> Answer:
        name = params["namespace"]
        uid = self._namespace_uids.setdefault(name, new_uid())
        return _json(discovery.namespace(name, uid, self._started))

    # -- resources -----------------------------------------------------------------------

    def _resource(self, params: Params) -> tuple[Resource, Collection]:
        resource = discovery.lookup(params["group"], params["version"], params["plural"])
        if resource is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return resource, self.store.collection(resource.plural)

    def _collection(self, request: Request, params: Params) -> Answer | Awaitable[None]:
        resource, collection = self._resource(params)
        namespace = params.get("namespace")
        method = request.method
        if method == "GET":
            watching = request.query.get("watch", "").lower() in ("true", "1")
            verb = "watch" if watching else "list"
        elif method == "POST" and namespace is not None:
            verb = "create"
        else:
            raise ApiError.method_not_allowed()
        release = self.fairness.admit(verb, resource.plural)
        try:
            if verb == "create":
                assert namespace is not None
                return self._create(resource, namespace, _body(request), request.query)
            query = request.query
            predicate = selector_predicate(
                query.get("labelSelector"), query.get("fieldSelector"), resource.plural
            )
            if verb == "watch":
                return open_watch(request, self.store, collection, namespace, predicate, self.watch)
            return self._list(collection, namespace, predicate, query)
        finally:
            if release:
                self.fairness.release(verb)

    def _item(self, request: Request, params: Params) -> Answer:
        resource, _ = self._resource(params)
        namespace, name = params["namespace"], params["name"]
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            request.method
        )
        if verb is None or (resource.plural == "pods" and verb in ("update", "patch")):
            raise ApiError.method_not_allowed()
        release = self.fairness.admit(verb, resource.plural)
        try:
            if verb == "get":
                return _json(self.store.require(resource.plural, namespace, name))
            body = _body(request)
            if verb == "delete":
                options = body if isinstance(body, dict) else {}
                policy = choose_policy(resource.plural, request.query, options)
                grace_text = request.query.get("gracePeriodSeconds")
                grace = options.get("gracePeriodSeconds") if grace_text is None else grace_text
                code, answer = self.collector.delete(
                    resource.plural,
                    namespace,
                    name,
                    policy,
                    None if grace is None else float(grace),
                    options.get("preconditions"),
                )
                return _json(answer, code)
            old = self.store.require(resource.plural, namespace, name)
            if verb == "patch":
                content_type = request.headers.get("content-type", _JSON)
                body = apply_patch(old, content_type, body)
            return self._replace(resource, old, body, request.query, patch=verb == "patch")
        finally:
            if release:
                self.fairness.release(verb)

    def _subresource(self, request: Request, params: Params) -> Answer:
        resource, _ = self._resource(params)
        namespace, name, sub = params["namespace"], params["name"], params["sub"]
        if sub == "status" and resource.plural in STATUS_SUBRESOURCE:
            return self._status(request, resource, namespace, name)
        if request.method != "GET" or (resource.plural, sub) not in (
            ("pods", "log"),
            ("jobs", "status"),
        ):
            raise ApiError.method_not_allowed()
        release = self.fairness.admit("get", f"{resource.plural}/{sub}")
        try:
            if sub == "status":
                return _json(self.store.require(resource.plural, namespace, name))
            log = self.kubelet.read_log(namespace, name)
            tail = request.query.get("tailLines")
            if tail is not None:
                lines = log.splitlines(keepends=True)
                log = b"".join(lines[-int(tail) :]) if int(tail) > 0 else b""
            limit = request.query.get("limitBytes")
            if limit is not None:
                log = log[: int(limit)]
            return Answer(200, log, _TEXT)
        finally:
            if release:
                self.fairness.release("get")

    def _status(self, request: Request, resource: Resource, namespace: str, name: str) -> Answer:
        """The ``status`` subresource of a custom resource that declares one: a GET reads
        the object; a PUT or PATCH changes its ``status`` alone (and a write of the object
        itself keeps the status it had), as the API server does for such a CRD."""
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch"}.get(request.method)
        if verb is None:
            raise ApiError.method_not_allowed()
        release = self.fairness.admit(verb, f"{resource.plural}/status")
        try:
            old = self.store.require(resource.plural, namespace, name)
            if verb == "get":
                return _json(old)
            body = _body(request)
            if verb == "patch":
                content_type = request.headers.get("content-type", _JSON)
                body = apply_patch(old, content_type, body)
            if not isinstance(body, dict):
                raise ApiError.bad_request("the body of an update must be a JSON object")
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise ApiError.conflict(
                    resource.group,
                    resource.plural,
                    name,
                    "the object has been modified; please apply your changes "
                    "to the latest version and try again",
                )
            obj: Obj = {**old, "metadata": dict(old["metadata"])}
            if body.get("status") is None:
                obj.pop("status", None)
            else:
                obj["status"] = body["status"]
            return _json(self.store.replace(resource.plural, obj))
        finally:
            if release:
                self.fairness.release(verb)

    # -- verbs ---------------------------------------------------------------------------

    def _create(self, resource: Resource, namespace: str, body: Any, query: Any) -> Answer:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the body of a create must be a JSON object")
        metadata = dict(body.get("metadata") or {})
        if metadata.get("namespace") not in (None, "", namespace):
            raise ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = f"{metadata['generateName']}{random_suffix()}"
        uid = new_uid()
        for key in ("resourceVersion", "deletionTimestamp", "managedFields", "selfLink"):
            metadata.pop(key, None)
        metadata.update(namespace=namespace, uid=uid, creationTimestamp=now_iso())
        obj: Obj = {**body, "kind": resource.kind, "apiVersion": resource.api_version}
        obj["metadata"] = metadata
        if resource.plural == "jobs":
            validate_job(obj)
            if not metadata.get("name"):
                raise ApiError.invalid("batch", "Job", "", check_name("", "metadata.name"))
            metadata["generation"] = 1
            default_job(obj, uid)
            obj["status"] = {}
        else:
            causes = check_name(metadata.get("name"), "metadata.name")
            if causes:
                raise ApiError.invalid(
                    resource.group, resource.kind, metadata.get("name") or "", causes
                )
            if resource.group:
                metadata["generation"] = 1
            if resource.plural in STATUS_SUBRESOURCE:
                obj.pop("status", None)  # the status is written through …/status
            elif resource.plural in configdata.KINDS:
                configdata.prepare(resource.plural, obj)
        if query.get("dryRun") == "All":
            return _json(obj, 201)
        created = self.store.create(resource.plural, obj)
        if resource.plural == "events":
            self.recorder.track(created)
        return Answer(201, self.store.serialised(resource.plural, created))

    def _replace(
        self, resource: Resource, old: Obj, body: Any, query: Any, *, patch: bool
    ) -> Answer:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the body of an update must be a JSON object")
        old_meta = old["metadata"]
        metadata = dict(body.get("metadata") or {})
        name = old_meta["name"]
        if metadata.get("name", name) != name:
            raise ApiError.bad_request(
                f"the name of the object ({metadata.get('name')}) does not match the name on "
                f"the URL ({name})"
            )
        wanted = metadata.get("resourceVersion")
        if wanted and wanted != old_meta["resourceVersion"]:
            raise ApiError.conflict(
                resource.group,
                resource.plural,
                name,
                "the object has been modified; please apply your changes "
                "to the latest version and try again",
            )
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if key in old_meta:
                metadata[key] = old_meta[key]
            else:
                metadata.pop(key, None)
        for key in ("deletionTimestamp", "ownerReferences") if not patch else ():
            if key in old_meta and key not in metadata:
                metadata[key] = old_meta[key]
        obj: Obj = {**body, "kind": resource.kind, "apiVersion": resource.api_version}
        obj["metadata"] = metadata
        if resource.plural == "jobs":
            validate_job(obj)
            obj["status"] = old.get("status", {})
        elif resource.plural in configdata.KINDS:
            configdata.prepare(resource.plural, obj, old)
        elif resource.plural in STATUS_SUBRESOURCE:  # written through …/status alone
            obj.pop("status", None)
            if "status" in old:
                obj["status"] = old["status"]
        if query.get("dryRun") == "All":
            return _json(obj)
        changed = obj.get("spec") != old.get("spec")
        stored = self.store.replace(resource.plural, obj, bump_generation=changed)
        return _json(stored)

    def _list(
        self, collection: Collection, namespace: str | None, predicate: Any, query: Any
    ) -> Answer:
        resource = collection.resource
        limit_text = query.get("limit")
        limit = int(limit_text) if limit_text and limit_text.isdigit() else 0
        token = query.get("continue")
        objects = collection.objects
        list_rv = self.store.rv
        keys = collection.sorted_keys(namespace)
        if not limit and not token:
            items = [objects[k] for k in keys]
            if predicate is not None:
                items = [obj for obj in items if predicate(obj)]
            meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        else:
            start = 0
            if token:
                try:
                    state = orjson.loads(base64.urlsafe_b64decode(token.encode()))
                    list_rv = int(state["rv"])
                    start = bisect.bisect_right(keys, tuple(state["after"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ApiError.bad_request(f"continue key is not valid: {exc}") from exc
            items = []
            index = start
            while index < len(keys) and (not limit or len(items) < limit):
                obj = objects[keys[index]]
                if predicate is None or predicate(obj):
                    items.append(obj)
                index += 1
            meta = {"resourceVersion": str(list_rv)}
            if index < len(keys):
                after = list(keys[index - 1])
                meta["continue"] = base64.urlsafe_b64encode(
                    orjson.dumps({"rv": list_rv, "after": after})
                ).decode()
                if predicate is None:
                    meta["remainingItemCount"] = len(keys) - index
        return _json(
            {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": meta,
                "items": items,
            }
        )
