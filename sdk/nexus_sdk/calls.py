"""The API calls, without I/O: what each request is, and what each answer means.

Both clients (:mod:`nexus_sdk.client`, async, and :mod:`nexus_sdk.syncclient`) build their
requests here and read their answers here, so they cannot drift apart; all they add is
sending (with :mod:`nexus_sdk.retrying`) and waiting, each in its own way.

Guarantees:

* every submit carries an ``Idempotency-Key`` (one made here when the caller gave none),
  so a retried or repeated submit never creates a second run;
* an error answer becomes the exception of its kind (:func:`nexus_sdk.errors.error_for`),
  with the server's ``message``; a body that is not the usual JSON error still gives one;
* path segments are quoted, so a tag with ``/`` or ``?`` stays one segment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx

from nexus_sdk.errors import ApiError, error_for
from nexus_sdk.models import ParentRequest, RunBody
from nexus_sdk.retrying import retry_after_seconds

PREFIX = "/algorithm/v1.2"
BULK_LIMIT = 1000
"""The most runs one bulk request may carry (DESIGN §2)."""
DEFAULT_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Call:
    """One request to the API (a path below the server's URL)."""

    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run to submit; ``idempotency_key`` is made when left out."""

    parameters: Any
    tag: str | None = None
    configuration: Mapping[str, Any] | None = None
    """``customConfiguration`` overrides of the template (image tag, limits, workgroup…)."""
    parent: ParentRequest | None = None
    payload_valid_for: str | None = None
    idempotency_key: str | None = None

    def body(self) -> RunBody:
        body: RunBody = {"algorithmParameters": self.parameters}
        if self.tag is not None:
            body["tag"] = self.tag
        if self.configuration is not None:
            body["customConfiguration"] = dict(self.configuration)
        if self.parent is not None:
            body["parentRequest"] = self.parent
        if self.payload_valid_for is not None:
            body["payloadValidFor"] = self.payload_valid_for
        return body

    def key(self) -> str:
        return self.idempotency_key or str(uuid.uuid4())


def segment(value: str) -> str:
    return quote(value, safe="")


def submit(algorithm: str, run: RunSpec) -> Call:
    headers = {"Idempotency-Key": run.key()}
    return Call("POST", f"{PREFIX}/run/{segment(algorithm)}", body=run.body(), headers=headers)


def bulk(algorithm: str, runs: list[RunSpec]) -> Call:
    items = []
    for run in runs:
        item = run.body()
        item["idempotencyKey"] = run.key()
        items.append(item)
    return Call("POST", f"{PREFIX}/runs/{segment(algorithm)}", body={"runs": items})


def keyed(runs: Iterable[RunSpec | Any], tag: str | None) -> Iterator[RunSpec]:
    """Runs as specs with their keys fixed now, so a retried chunk sends the same keys;
    an item that is not a :class:`RunSpec` is a run's parameters."""
    for run in runs:
        spec = run if isinstance(run, RunSpec) else RunSpec(run)
        if spec.tag is None and tag is not None:
            spec = replace(spec, tag=tag)
        if spec.idempotency_key is None:
            spec = replace(spec, idempotency_key=str(uuid.uuid4()))
        yield spec


def chunks(runs: Iterable[RunSpec], size: int) -> Iterator[list[RunSpec]]:
    if not 1 <= size <= BULK_LIMIT:
        raise ValueError(f"chunk size: expected 1 to {BULK_LIMIT}, got {size}")
    chunk: list[RunSpec] = []
    for run in runs:
        chunk.append(run)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def status(algorithm: str, request_id: str, wait: float | None = None) -> Call:
    params = {} if wait is None else {"wait": str(int(wait))}
    path = f"{PREFIX}/results/{segment(algorithm)}/requests/{segment(request_id)}"
    return Call("GET", path, params=params)


def tag_listing(algorithm: str, tag: str, limit: int | None = None, results: bool = False) -> Call:
    params = {} if limit is None else {"limit": str(limit)}
    if results:  # each result kept inline comes with its run
        params["include"] = "result"
    return Call("GET", f"{PREFIX}/results/{segment(algorithm)}/tags/{segment(tag)}", params=params)


def tag_summary(algorithm: str, tag: str, wait: float | None = None) -> Call:
    params = {} if wait is None else {"wait": str(int(wait))}
    path = f"{PREFIX}/results/{segment(algorithm)}/tags/{segment(tag)}/summary"
    return Call("GET", path, params=params)


def metadata(algorithm: str, request_id: str) -> Call:
    path = f"{PREFIX}/metadata/{segment(algorithm)}/requests/{segment(request_id)}"
    return Call("GET", path)


def cancel(algorithm: str, request_id: str, reason: str, initiator: str, policy: str) -> Call:
    body = {"reason": reason, "initiator": initiator, "cancellationPolicy": policy}
    path = f"{PREFIX}/cancel/{segment(algorithm)}/requests/{segment(request_id)}"
    return Call("POST", path, body=body)


def next_page(response: httpx.Response) -> str | None:
    """The URL of the next page of a listing (``Link: <…>; rel="next"``), if any."""
    link = response.links.get("next")
    return str(response.url.join(link["url"])) if link and link.get("url") else None


def error_of(response: httpx.Response, retry_after: float | None = None) -> ApiError:
    """The exception an error answer stands for."""
    code, message = f"http_{response.status_code}", response.reason_phrase or "error"
    try:
        body = json.loads(response.content)
    except ValueError:
        text = response.text.strip()
        if text:
            message = text[:500]
    else:
        if isinstance(body, dict):
            code = str(body.get("error") or code)
            message = str(body.get("message") or message)
    if retry_after is None:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    request = response.request
    return error_for(
        response.status_code, code, message, retry_after=retry_after,
        method=request.method, url=str(request.url.copy_with(query=None)),
    )  # fmt: skip


def json_of(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; an error answer raises its exception."""
    if response.status_code >= 400:
        raise error_of(response)
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise error_for(
            502, "bad_answer", f"the answer is not JSON: {response.text[:200]!r}",
            method=response.request.method, url=str(response.request.url),
        ) from exc  # fmt: skip


def headers(token: str | None) -> dict[str, str]:
    """What every API request carries (never sent to result URLs: those are presigned)."""
    sent = {"Accept": "application/json"}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    return sent
