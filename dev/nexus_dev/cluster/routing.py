"""Which handler answers a request: the API server's path shapes, matched without a router.

aiohttp's router tried its resources one after another (regular expressions), built a
match-info object and ran the middleware chain for every request — about a tenth of what a
shard spent on each Job create. The paths of the Kubernetes API have few shapes, so
:func:`match` splits the path once and decides by the number and names of its segments:

====================================================  ========  =============
path                                                  methods   handler
====================================================  ========  =============
``/version``, ``/api``, ``/apis`` (and with ``/``)    GET       discovery
``/api/{version}``, ``/apis/{group}/{version}`` (/)   GET       ``resources``
``/metrics``, ``/healthz``, ``/livez``, ``/readyz``   GET       ``metrics``, ``probe``
``/api/v1/namespaces/{namespace}``                    GET       ``namespace``
``{prefix}/{plural}``                                 any       ``collection``
``{prefix}/namespaces/{namespace}/{plural}``          any       ``collection``
``{prefix}/namespaces/{namespace}/{plural}/{name}``   any       ``item``
``…/{name}/{sub}``                                    any       ``subresource``
====================================================  ========  =============

where ``{prefix}`` is ``/api/{version}`` or ``/apis/{group}/{version}``. Anything else is
:class:`NoRoute`: the API server answers it with the plain ``404 Not Found`` (``405 Method
Not Allowed`` for another method on a GET-only path) that aiohttp's router gave before, so
clients see no difference. Segment values are percent-decoded, as the router's were.
"""

from __future__ import annotations

from urllib.parse import unquote

Params = dict[str, str]


class NoRoute(Exception):
    """No handler for the path (``404``), or not for this method (``405``, GET only)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


_ROOTS = {"version": "version", "api": "core_versions", "apis": "groups"}
_OPEN = {"metrics": "metrics", "healthz": "probe", "livez": "probe", "readyz": "probe"}


def _get_only(method: str, handler: str, params: Params) -> tuple[str, Params]:
    if method != "GET":
        raise NoRoute(405)
    return handler, params


def match(method: str, path: str) -> tuple[str, Params]:
    """The name of the handler for ``path`` (as sent, not decoded) and its parameters."""
    segments = path.split("/")[1:]  # an absolute path: "/a/b" -> ["a", "b"]
    trailing = len(segments) > 1 and segments[-1] == ""
    if trailing:
        segments.pop()
    if not segments or "" in segments:
        raise NoRoute(404)
    if "%" in path:
        segments = [unquote(s) for s in segments]
    count, head = len(segments), segments[0]
    if count == 1:
        if head in _ROOTS:
            return _get_only(method, _ROOTS[head], {})
        if head in _OPEN and not trailing:
            return _get_only(method, _OPEN[head], {})
        raise NoRoute(404)
    if head == "api":
        prefix = {"group": "", "version": segments[1]}
        rest = segments[2:]
    elif head == "apis" and count >= 3:
        prefix = {"group": segments[1], "version": segments[2]}
        rest = segments[3:]
    else:
        raise NoRoute(404)
    if not rest:
        return _get_only(method, "resources", prefix)
    if trailing:
        raise NoRoute(404)
    if len(rest) == 1:
        return "collection", {**prefix, "plural": rest[0]}
    if rest[0] != "namespaces":
        raise NoRoute(404)
    if len(rest) == 2:
        if head == "api" and prefix["version"] == "v1":
            return _get_only(method, "namespace", {"namespace": rest[1]})
        raise NoRoute(404)
    params = {**prefix, "namespace": rest[1], "plural": rest[2]}
    if len(rest) == 3:
        return "collection", params
    params["name"] = rest[3]
    if len(rest) == 4:
        return "item", params
    if len(rest) == 5:
        params["sub"] = rest[4]
        return "subresource", params
    raise NoRoute(404)
