"""Bad input gets a 4xx that names the problem, stores nothing and leaves the server healthy.

Every case is sent to a whole running system (scheduler, receiver, local cluster on real
PostgreSQL, Redis and S3) and must get a JSON error ``{"error", "message"}`` whose message
names the field or the problem; afterwards the ``runs`` table and the bucket's ``inputs/``
hold exactly what they held before, ``/health/ready`` answers 200 and a valid request is
still accepted. Cases are grouped so that one system serves many of them; every assertion
says which case failed.

The shard is ``off`` (pods stay Pending), so that runs accepted along the way stay where
they are, and templates keep inputs in S3, so that a stray upload would show.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import brotli
import orjson
from backports import zstd
from harness import Servers
from support.system import TOKEN, System, local_system, send_raw, template

from nexus_dev.cluster.emulators import ShardSpec

RUN = "/algorithm/v1.2/run/echo"
COMPRESSIONS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}
MAX_BODY = 1024**2  # the default NEXUS__HTTP__MAX_BODY_SIZE
ABSENT: Any = object()
VALID = {"algorithmParameters": {"x": 1}}
ECHO_CONTAINER = {
    "image": "algorithms/echo",
    "registry": "example.io",
    "versionTag": "1.0",
    "allowedImages": ["example.io/team/*"],  # a request may run team/other instead
}


@dataclass
class Case:
    """One bad request and what its answer must say."""

    name: str
    names: str
    """Text the error message must contain (the field or the problem)."""
    json: Any = ABSENT
    """A body sent as JSON (``ABSENT``: none, or ``data``)."""
    data: bytes | None = None
    status: int = 400
    path: str = RUN
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    code: str | None = None


@dataclass
class Checker:
    """Sends cases and checks that nothing was stored and the server is still well."""

    system: System
    accepted: list[str] = field(default_factory=list)

    async def stored(self) -> tuple[int, set[str]]:
        return await self.system.stored()

    async def send(self, case: Case) -> tuple[int, Any]:
        options: dict[str, Any] = {"headers": case.headers}
        if case.json is not ABSENT:
            options["data"] = orjson.dumps(case.json)
            options["headers"] = {"Content-Type": "application/json", **case.headers}
        elif case.data is not None:
            options["data"] = io.BytesIO(case.data)  # large bytes would warn
        status, body, _ = await self.system.call(case.method, case.path, **options)
        return status, body

    async def refused(self, case: Case) -> dict[str, Any]:
        before = await self.stored()
        status, body = await self.send(case)
        where = f"case {case.name!r}: answered {status} {body!r}"
        assert status == case.status, where
        assert isinstance(body, dict), where
        assert set(body) == {"error", "message"}, where
        assert isinstance(body["error"], str) and body["error"], where
        assert case.code is None or body["error"] == case.code, where
        assert case.names in body["message"], where
        assert await self.stored() == before, f"case {case.name!r} stored something"
        await self.healthy(case.name)
        return dict(body)

    async def healthy(self, name: str) -> None:
        status, body, _ = await self.system.call("GET", "/health/ready", token=None)
        assert status == 200, f"after case {name!r}: not ready ({status} {body!r})"
        status, body, _ = await self.system.call("POST", RUN, json=VALID)
        assert status == 202, f"after case {name!r}: a valid run got {status} {body!r}"
        self.accepted.append(body["requestId"])

    async def metadata(self, request_id: str) -> dict[str, Any]:
        status, body = await self.system.get(f"/algorithm/v1.2/metadata/echo/requests/{request_id}")
        assert status == 200, (status, body)
        return dict(body)


@asynccontextmanager
async def checker(servers: Servers) -> AsyncIterator[Checker]:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[
            template("echo", inline=False, container=ECHO_CONTAINER),
            template("other", inline=False),
        ],
        workgroups=[("default", "shard-0"), ("second", "shard-0"), ("elsewhere", "shard-9")],
    ) as system:
        yield Checker(system)


def run_with(**fields: Any) -> dict[str, Any]:
    return {"algorithmParameters": {}, **fields}


def overrides(**configuration: Any) -> dict[str, Any]:
    return run_with(customConfiguration=configuration)


async def test_bodies_that_are_not_run_requests(servers: Servers) -> None:
    cases = [
        Case("malformed JSON", "not valid JSON", data=b'{"algorithmParameters": {', code="malformed_json"),
        Case("trailing garbage", "not valid JSON", data=b'{"algorithmParameters": {}} x'),
        Case("not UTF-8", "not valid JSON", data=b'{"algorithmParameters": {"a": "\xff"}}'),
        Case("lone surrogate", "not valid JSON", data=b'{"algorithmParameters": {"a": "\\ud800"}}'),
        Case("empty body", "empty", data=b""),
        Case("array body", "JSON object", json=[VALID]),
        Case("string body", "JSON object", json="algorithmParameters"),
        Case("number body", "JSON object", json=42),
        Case("null body", "JSON object", json=None),
        Case("missing algorithmParameters", "algorithmParameters", json={"tag": "x"}),
        Case("algorithmParameters list", "algorithmParameters", json={"algorithmParameters": [1]}),
        Case("algorithmParameters string", "algorithmParameters", json={"algorithmParameters": "{}"}),
        Case("algorithmParameters null", "algorithmParameters", json={"algorithmParameters": None}),
        Case("tag a number", "tag", json=run_with(tag=7)),
        Case("customConfiguration a list", "customConfiguration", json=run_with(customConfiguration=[])),
        Case("parentRequest a string", "parentRequest", json=run_with(parentRequest="abc")),
        Case("payloadValidFor a number", "payloadValidFor", json=run_with(payloadValidFor=3600)),
        Case("algorithmName mismatch", "algorithmName", json=run_with(algorithmName="other")),
        Case("algorithmName a number", "algorithmName", json=run_with(algorithmName=1)),
        Case("nested too deep", "not valid JSON", data=b'{"algorithmParameters": {"a": ' + b"[" * 2000 + b"]" * 2000 + b"}}"),
        Case("number beyond a double", "not valid JSON", data=b'{"algorithmParameters": {"a": 1e400}}'),
        Case("nested deeper than it can be written", "algorithmParameters", data=b'{"algorithmParameters": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}"),
        Case("gzip said, not sent", "cannot be read", data=b'{"algorithmParameters": {}}', headers={"Content-Encoding": "gzip"}, code="malformed_body"),
        Case("deflate said, not sent", "cannot be read", data=b"not compressed", headers={"Content-Encoding": "deflate"}),
        Case("br said, not sent", "cannot be read", data=b"not compressed", headers={"Content-Encoding": "br"}),
        Case("zstd said, not sent", "cannot be read", data=b"not compressed", headers={"Content-Encoding": "zstd"}),
        Case("an encoding not decoded", "'snappy' is not supported", data=b"{}", headers={"Content-Encoding": "snappy"}, status=415, code="unsupported_encoding"),
        Case("two encodings", "'gzip, br' is not supported", data=b"{}", headers={"Content-Encoding": "gzip, br"}, status=415),
        Case("identity and another", "'identity, gzip' is not supported", data=b"{}", headers={"Content-Encoding": "identity, gzip"}, status=415),
    ]  # fmt: skip
    async with checker(servers) as check:
        for case in cases:
            await check.refused(case)
        # ``null`` for an optional field means absent
        nulls = run_with(
            algorithmName=None,
            customConfiguration=None,
            parentRequest=None,
            tag=None,
            payloadValidFor=None,
        )
        status, body, _ = await check.system.call("POST", RUN, json=nulls)
        assert status == 202, (status, body)


async def test_overrides_are_validated_and_older_names_accepted(servers: Servers) -> None:
    cases = [
        Case("unknown override", "customConfiguration.colour", json=overrides(colour="red"), code="invalid_configuration"),
        Case("bad cpuLimit", "customConfiguration.cpuLimit", json=overrides(cpuLimit="lots")),
        Case("cpuLimit a number", "customConfiguration.cpuLimit", json=overrides(cpuLimit=2)),
        Case("bad memoryLimit", "customConfiguration.memoryLimit", json=overrides(memoryLimit="1 GB")),
        Case("negative deadlineSeconds", "customConfiguration.deadlineSeconds", json=overrides(deadlineSeconds=-1)),
        Case("deadlineSeconds a bool", "customConfiguration.deadlineSeconds", json=overrides(deadlineSeconds=True)),
        Case("deadlineSeconds a float", "customConfiguration.deadlineSeconds", json=overrides(deadlineSeconds=1.5)),
        Case("maximumRetries too large", "customConfiguration.maximumRetries", json=overrides(maximumRetries=10_000)),
        Case("unknown workgroup", "nowhere", json=overrides(workgroup="nowhere")),
        Case("workgroup on an unknown shard", "customConfiguration.workgroup", json=overrides(workgroup="elsewhere")),
        Case("bad alias imageTag", "customConfiguration.imageTag", json=overrides(imageTag="no tag!")),
        Case("bad alias imageRepository", "customConfiguration.imageRepository", json=overrides(imageRepository="../x")),
        Case("bad alias version", "customConfiguration.version", json=overrides(version="")),
        Case("bad customResources", "customConfiguration.customResources", json=overrides(customResources=["gpu"])),
        Case("cpu among customResources", "customConfiguration.cpuLimit instead", json=overrides(customResources={"cpu": "4"})),
        Case("memory among customResources", "customConfiguration.customResources.memory", json=overrides(customResources={"memory": "1"})),
        Case("an unqualified resource", "customConfiguration.customResources.gpu", json=overrides(customResources={"gpu": 1})),
        Case("part of an extended resource", "whole units", json=overrides(customResources={"nvidia.com/gpu": "0.5"})),
        Case("an extended resource in milli-units", "whole units", json=overrides(customResources={"nvidia.com/gpu": "500m"})),
        Case("a kubernetes.io resource", "kubernetes.io", json=overrides(customResources={"kubernetes.io/gpu": 1})),
        Case("ephemeral storage not a quantity", "customConfiguration.customResources.ephemeral-storage", json=overrides(customResources={"ephemeral-storage": "lots"})),
        Case("newline after an override", "customConfiguration.versionTag", json=overrides(versionTag="1.0\n")),
        Case("newline after a quantity", "customConfiguration.cpuLimit", json=overrides(cpuLimit="1\n")),
        Case("NUL in an override", "customConfiguration.versionTag", json=overrides(versionTag="1.0\u0000")),
        Case("NUL in an override's name", "customConfiguration.", json=overrides(**{"cpu\u0000Limit": "1"})),
        Case("NUL in a resource quantity", "customConfiguration.customResources", json=overrides(customResources={"nvidia.com/gpu": "1\u0000"})),
    ]  # fmt: skip
    async with checker(servers) as check:
        for case in cases:
            await check.refused(case)

        older = {
            "imageRepository": "team/other",
            "imageTag": "2.0",
            "cpuLimit": "500m",
            "memoryLimit": "2Gi",
            "workgroup": "second",
            "deadlineSeconds": 120,
            "maximumRetries": 2,
            "customResources": {
                "nvidia.com/gpu": 1,
                "ephemeral-storage": "10Gi",
                "hugepages-2Mi": "4Mi",
            },
        }
        request_id = await check.system.submit("echo", overrides(**older))
        applied = (await check.metadata(request_id))["appliedConfiguration"]
        assert applied["image"] == "team/other", applied
        assert applied["versionTag"] == "2.0", applied
        assert applied["cpuLimit"] == "500m", applied
        assert applied["memoryLimit"] == "2Gi", applied
        assert applied["workgroup"] == "second", applied
        assert applied["deadlineSeconds"] == 120, applied
        assert applied["maximumRetries"] == 2, applied
        assert applied["customResources"] == {
            "nvidia.com/gpu": "1",
            "ephemeral-storage": "10Gi",
            "hugepages-2Mi": "4Mi",
        }, applied

        request_id = await check.system.submit("echo", overrides(version="3.1"))
        answer = await check.metadata(request_id)
        assert answer["appliedConfiguration"]["versionTag"] == "3.1", answer
        assert answer["configurationOverrides"] == {"versionTag": "3.1"}, answer


async def test_run_options_are_validated(servers: Servers) -> None:
    async with checker(servers) as check:
        parent = await check.system.submit("echo")
        cases = [
            Case("payloadValidFor soon", "payloadValidFor", json=run_with(payloadValidFor="soon")),
            Case("payloadValidFor 0s", "payloadValidFor", json=run_with(payloadValidFor="0s")),
            Case("payloadValidFor 30d", "payloadValidFor", json=run_with(payloadValidFor="30d")),
            Case("payloadValidFor huge", "payloadValidFor", json=run_with(payloadValidFor="9" * 400 + "h")),
            Case("tag too long", "tag", json=run_with(tag="t" * 129)),
            Case("tag empty", "tag", json=run_with(tag="")),
            Case("tag with a newline", "tag", json=run_with(tag="a\nb")),
            Case("tag with a bell", "tag", json=run_with(tag="a\x07b")),
            Case("tag with NUL", "tag", json=run_with(tag="a\u0000b")),
            Case("tag a dot", "tag", json=run_with(tag=".")),
            Case("tag two dots", "tag", json=run_with(tag="..")),
            Case("parent does not exist", "parentRequest", json=run_with(parentRequest={"requestId": str(uuid.uuid4()), "algorithmName": "echo"})),
            Case("parent of another algorithm", "parentRequest", json=run_with(parentRequest={"requestId": parent, "algorithmName": "other"})),
            Case("parent id malformed", "parentRequest.requestId", json=run_with(parentRequest={"requestId": "12", "algorithmName": "echo"})),
            Case("parent id a number", "parentRequest.requestId", json=run_with(parentRequest={"requestId": 12, "algorithmName": "echo"})),
            Case("parent without algorithm", "parentRequest.algorithmName", json=run_with(parentRequest={"requestId": parent})),
            Case("parent algorithm with NUL", "parentRequest.algorithmName", json=run_with(parentRequest={"requestId": parent, "algorithmName": "echo\u0000"})),
            Case("parent algorithm with a newline", "parentRequest.algorithmName", json=run_with(parentRequest={"requestId": parent, "algorithmName": "echo\n"})),
            Case("Idempotency-Key too long", "Idempotency-Key", json=VALID, headers={"Idempotency-Key": "k" * 257}),
        ]  # fmt: skip
        for case in cases:
            await check.refused(case)

        # header bytes that are not UTF-8 reach the server as surrogates
        before = await check.stored()
        body = orjson.dumps(VALID)
        request = (
            (
                f"POST {RUN} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            ).encode()
            + b"Idempotency-Key: \xff\xfe\r\n\r\n"
            + body
        )
        status, answer = await send_raw(check.system.url, request)
        assert status == 400 and "Idempotency-Key" in answer["message"], (status, answer)
        assert await check.stored() == before
        await check.healthy("Idempotency-Key not UTF-8")

        # valid ones at the limits are accepted
        request_id = await check.system.submit(
            "echo",
            run_with(tag="t" * 128, payloadValidFor="7d", parentRequest={
                "requestId": parent, "algorithmName": "echo"
            }),
            **{"Idempotency-Key": "k" * 256},
        )  # fmt: skip
        answer = await check.metadata(request_id)
        assert answer["tag"] == "t" * 128, answer
        assert answer["payloadValidFor"] == f"{7 * 86400}s", answer
        assert answer["parent"] == {"requestId": parent, "algorithmName": "echo"}, answer


async def test_nul_characters_in_parameters_are_kept(servers: Servers) -> None:
    """PostgreSQL's jsonb refuses U+0000; the input is kept as bytes, so it round-trips."""
    parameters = {"text": "a\u0000b", "k\u0000ey": ["\u0000"]}
    async with checker(servers) as check:
        request_id = await check.system.submit("echo", {"algorithmParameters": parameters})
        status, _, headers = await check.system.call(
            "GET", f"/algorithm/v1.2/payload/echo/requests/{request_id}"
        )
        assert status == 302, status
        async with check.system.session.get(headers["Location"]) as response:
            assert response.status == 200
            assert orjson.loads(await response.read()) == parameters
        await check.healthy("NUL in algorithmParameters")


async def test_bodies_over_the_size_limit_get_413(servers: Servers) -> None:
    def padded(size: int) -> bytes:
        frame = b'{"algorithmParameters": {"pad": ""}}'
        body = frame.replace(b'""', b'"' + b"p" * (size - len(frame)) + b'"')
        assert len(body) == size
        return body

    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    too_large = "larger than this server accepts"
    async with checker(servers) as check:
        await check.refused(Case("one byte over", too_large, data=padded(MAX_BODY + 1), status=413))
        # a client that stops sending once it has its 413 leaves aiohttp's server lingering
        # (up to 10 s) for the rest of the body, even after the connection is gone: this
        # one sends it all
        before = await check.stored()
        far_over = padded(3 * MAX_BODY)
        head = (
            f"POST {RUN} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(far_over)}\r\n\r\n"
        )
        status, body = await send_raw(check.system.url, head.encode() + far_over)
        assert status == 413, ("far over", status, body)
        assert set(body) == {"error", "message"}, body
        assert body["error"] == "payload_too_large" and too_large in body["message"], body
        assert await check.stored() == before
        await check.healthy("far over")
        for encoding, compress in COMPRESSIONS.items():
            await check.refused(
                Case(
                    f"{encoding}, over once inflated",
                    too_large,
                    data=compress(padded(4 * MAX_BODY)),
                    headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
                    status=413,
                )
            )
        before = await check.stored()
        status, body, _ = await check.system.call(
            "POST", RUN, data=chunks(padded(MAX_BODY + 1)), headers={"Content-Type": "application/json"}
        )  # fmt: skip
        assert status == 413, ("chunked, one byte over", status, body)
        assert await check.stored() == before
        await check.healthy("chunked, one byte over")
        # exactly the limit is accepted
        status, body, _ = await check.system.call("POST", RUN, data=io.BytesIO(padded(MAX_BODY)))
        assert status == 202, (status, body)


async def test_bodies_in_each_decoded_encoding_are_read(servers: Servers) -> None:
    async with checker(servers) as check:
        for encoding, compress in {
            **COMPRESSIONS,
            "identity": bytes,
            "GZIP": gzip.compress,
        }.items():
            parameters = {"encoding": encoding, "text": "héllo" * 100}
            status, body, _ = await check.system.call(
                "POST",
                RUN,
                data=compress(orjson.dumps({"algorithmParameters": parameters})),
                headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
            )
            assert status == 202, (encoding, status, body)
            async with check.system.session.get(
                f"{check.system.url}/algorithm/v1.2/payload/echo/requests/{body['requestId']}",
                headers=check.system.headers(),
            ) as answer:
                assert answer.status == 200, encoding
                assert orjson.loads(await answer.read()) == parameters, encoding


async def test_bad_names_and_ids_in_paths(servers: Servers) -> None:
    base = "/algorithm/v1.2"
    names = {
        "upper case": "Echo",
        "underscore": "echo_1",
        "64 characters": "e" * 64,
        "dot dot": "..",
        "encoded dot dot": "%2e%2e",
        "encoded slashes": "echo%2F..%2Fx",
        "encoded NUL": "echo%00",
        "trailing newline": "echo%0A",
        "non-ASCII": "ech%C3%B6",
        "bad escape": "%ff",
        "leading dash": "-echo",
    }
    ids = {
        "not a UUID": "not-a-uuid",
        "encoded dot dots": "..%2F..%2Fx",
        "dot dot": "..",
        "encoded NUL": f"{uuid.uuid4()}%00",
        "trailing newline": f"{uuid.uuid4()}%0A",
        "too long": "a" * 5000,
    }
    async with checker(servers) as check:
        await check.refused(
            Case("unknown algorithm", "'nosuch'", json=VALID, path=f"{base}/run/nosuch", status=404, code="unknown_algorithm")
        )  # fmt: skip
        known = str(uuid.uuid4())
        for label, name in names.items():
            for method, path in (
                ("POST", f"{base}/run/{name}"),
                ("GET", f"{base}/results/{name}/requests/{known}"),
                ("GET", f"{base}/results/{name}/tags/a"),
                ("GET", f"{base}/metadata/{name}/requests/{known}"),
                ("GET", f"{base}/payload/{name}/requests/{known}"),
                ("POST", f"{base}/cancel/{name}/requests/{known}"),
            ):
                await expect_4xx(check, f"algorithm {label}: {method} {path}", method, path)
        for label, raw in ids.items():
            for method, path in (
                ("GET", f"{base}/results/echo/requests/{raw}"),
                ("GET", f"{base}/metadata/echo/requests/{raw}"),
                ("GET", f"{base}/payload/echo/requests/{raw}"),
                ("GET", f"{base}/payload/echo/requests/{raw}/content"),
                ("POST", f"{base}/cancel/echo/requests/{raw}"),
            ):
                await expect_4xx(check, f"request id {label}: {method} {path}", method, path)
        for label, tag in {"NUL": "a%00b", "control character": "a%07b"}.items():
            path = f"{base}/results/echo/tags/{tag}"
            await check.refused(Case(f"tag with a {label}", "tag", path=path, method="GET"))
        # a tag no run can carry finds none; an encoded slash is part of the tag
        status, body, _ = await check.system.call("GET", f"{base}/results/echo/tags/{'t' * 129}")
        assert (status, body) == (200, []), (status, body)
        slashed = (await check.system.call("POST", RUN, json=run_with(tag="a/b")))[1]["requestId"]
        status, body, _ = await check.system.call("GET", f"{base}/results/echo/tags/a%2Fb")
        assert status == 200 and [r["requestId"] for r in body] == [slashed], (status, body)
        # which of them must be 400, and what the message names
        await check.refused(Case("DNS-1123", "algorithmName", path=f"{base}/run/Echo", json=VALID))
        await check.refused(
            Case("newline", "algorithmName", path=f"{base}/run/echo%0A", json=VALID)
        )
        await check.refused(
            Case("request id", "requestId", method="GET", path=f"{base}/results/echo/requests/x")
        )
        await check.refused(
            Case("tag with NUL", "tag", method="GET", path=f"{base}/results/echo/tags/a%00b")
        )
        # routes that do not exist answer JSON too
        for method, path in (
            ("POST", f"{base}/run/"),
            ("POST", f"{base}/run"),
            ("GET", RUN),
            ("POST", f"{base}/results/echo/requests/{known}/../x"),
            ("GET", "/algorithm/v9/run/echo"),
        ):
            await expect_4xx(check, f"route {method} {path}", method, path)


async def expect_4xx(check: Checker, name: str, method: str, path: str) -> None:
    """A 400/404/405 JSON error, nothing stored, still healthy (no message check)."""
    before = await check.stored()
    status, body, _ = await check.system.call(method, path, json=VALID)
    assert status in (400, 404, 405), f"{name}: {status} {body!r}"
    assert isinstance(body, dict) and set(body) == {"error", "message"}, f"{name}: {body!r}"
    assert await check.stored() == before, f"{name}: stored something"
    status, body, _ = await check.system.call("GET", "/health/ready", token=None)
    assert status == 200, f"after {name}: {status} {body!r}"


async def test_an_idempotency_key_names_one_request(servers: Servers) -> None:
    """A key reused for anything but the same request is refused (422, naming what differs)
    and stores nothing; the same key while the first request is still being accepted is 409
    with Retry-After; a repeat of the same request is answered as the first was."""
    async with checker(servers) as check:
        keyed = {"Idempotency-Key": "order-7"}
        tagged = {**VALID, "tag": "a"}
        first = await check.system.submit("echo", tagged, **keyed)
        conflicts = [
            ("another algorithm", "algorithmName", tagged, "/algorithm/v1.2/run/other"),
            ("other parameters", "algorithmParameters", {**tagged, "algorithmParameters": {"x": 2}}, RUN),
            ("another tag", "tag", {**VALID, "tag": "b"}, RUN),
            ("no tag", "tag", VALID, RUN),
            ("an override", "customConfiguration", {**tagged, "customConfiguration": {"deadlineSeconds": 30}}, RUN),
            ("another validity", "payloadValidFor", {**tagged, "payloadValidFor": "2h"}, RUN),
        ]  # fmt: skip
        for name, field_name, body, path in conflicts:
            case = Case(
                f"key of an echo run, {name}", field_name, json=body, path=path,
                headers=keyed, status=422, code="idempotency_conflict",
            )  # fmt: skip
            answer = await check.refused(case)
            assert first in answer["message"], answer
        # the same request, even written otherwise (nulls, key order), is the same run
        same = {"tag": "a", "customConfiguration": None, "algorithmParameters": {"x": 1}}
        assert await check.system.submit("echo", same, **keyed) == first

        # many at once with a new key, on one pod: one run; each answer is its id, or 409
        # while the first is still being accepted
        async def send() -> tuple[int, Any, Any]:
            return await check.system.call(
                "POST", RUN, json=VALID, headers={"Idempotency-Key": "order-8"}
            )

        before = await check.stored()
        answers = await asyncio.gather(*(send() for _ in range(20)))
        ids = {body["requestId"] for status, body, _ in answers if status == 202}
        busy = [(body, headers) for status, body, headers in answers if status == 409]
        assert len(ids) == 1 and len(busy) + sum(s == 202 for s, _, _ in answers) == 20
        assert busy, "none of 20 requests sent at once found the first still in flight"
        for body, headers in busy:
            assert body["error"] == "idempotency_key_in_use" and headers["Retry-After"] == "1"
        rows, _ = await check.stored()
        assert rows == before[0] + 1
        assert await check.system.submit("echo", VALID, **{"Idempotency-Key": "order-8"}) in ids


async def test_bad_cancellations_change_nothing(servers: Servers) -> None:
    async with checker(servers) as check:
        request_id = await check.system.submit("echo")
        path = f"/algorithm/v1.2/cancel/echo/requests/{request_id}"
        cases = [
            Case("malformed JSON", "not valid JSON", data=b"{", path=path),
            Case("array body", "JSON object", json=[], path=path),
            Case("bad policy", "cancellationPolicy", json={"cancellationPolicy": "Sideways"}, path=path),
            Case("reason a number", "reason", json={"reason": 5}, path=path),
            Case("reason too long", "reason", json={"reason": "r" * 1001}, path=path),
            Case("initiator a list", "initiator", json={"initiator": ["me"]}, path=path),
            Case("reason with NUL", "reason", json={"reason": "a\u0000b"}, path=path),
            Case("initiator with NUL", "initiator", json={"initiator": "a\u0000b"}, path=path),
            Case("reason zero", "reason", json={"reason": 0}, path=path),
            Case("initiator an empty list", "initiator", json={"initiator": []}, path=path),
            Case("policy false", "cancellationPolicy", json={"cancellationPolicy": False}, path=path),
        ]  # fmt: skip
        for case in cases:
            await check.refused(case)
            answer = await check.system.result("echo", request_id)
            assert answer["status"] in ("BUFFERED", "RUNNING"), (case.name, answer)
        status, body, _ = await check.system.call("POST", path, json={"reason": "done\nhere"})
        assert status == 200, (status, body)
        assert (await check.system.result("echo", request_id))["status"] == "CANCELLED"


async def test_the_whole_v12_custom_configuration_is_validated(servers: Servers) -> None:
    """Each field of the v1.2 customConfiguration, and the v1.2 spellings, refused as a 4xx
    that names it; nulls never are (the Python client sends every field, null when unset,
    the .NET client PascalCase)."""
    env = [{"name": "A", "value": "1", "valueType": "PLAIN"}]
    cases = [
        Case("algorithmParameters null", "algorithmParameters", json={"algorithmParameters": None}),
        Case("a field twice", "Tag: the same field as tag", json=run_with(tag="a", Tag="b")),
        Case("parent without its id", "parentRequest.requestId", json=run_with(parentRequest={"requestId": None, "algorithmName": "echo"})),
        Case("env not a list", "customConfiguration.env", json=overrides(env={"A": "1"})),
        Case("env entry not an object", "customConfiguration.env[0]", json=overrides(env=["A=1"])),
        Case("env name missing", "customConfiguration.env[0].name", json=overrides(env=[{"value": "1"}])),
        Case("env name null", "customConfiguration.env[0].name", json=overrides(env=[{"name": None}])),
        Case("env name a number", "customConfiguration.env[0].name", json=overrides(env=[{"name": 1}])),
        Case("env name with =", "customConfiguration.env[0].name", json=overrides(env=[{"name": "A=B"}])),
        Case("env name of Nexus", "customConfiguration.env[0].name", json=overrides(env=[{"name": "NEXUS__REQUEST_ID"}])),
        Case("env twice", "customConfiguration.env[1].name", json=overrides(env=env + env)),
        Case("env value an object", "customConfiguration.env[0].value", json=overrides(env=[{"name": "A", "value": {}}])),
        Case("env value with NUL", "customConfiguration.env[0].value", json=overrides(env=[{"name": "A", "value": "a\u0000"}])),
        Case("env valueType unknown", "customConfiguration.env[0].valueType", json=overrides(env=[{"name": "A", "valueType": "SECRET_REFERENCE"}])),
        Case("env valueType a number", "customConfiguration.env[0].valueType", json=overrides(env=[{"name": "A", "valueType": 1}])),
        Case("env relative without a mount", "mounts none", json=overrides(env=[{"name": "A", "value": "a.json", "valueType": "RELATIVE_REFERENCE"}])),
        Case("env relative climbing out", "customConfiguration.env[0].value", json=overrides(env=[{"name": "A", "value": "../a", "valueType": "RELATIVE_REFERENCE"}])),
        Case("env entry unknown field", "customConfiguration.env[0].secret", json=overrides(env=[{"name": "A", "secret": True}])),
        Case("too many env", "customConfiguration.env", json=overrides(env=[{"name": f"A{i}"} for i in range(101)])),
        Case("args not a list", "customConfiguration.args", json=overrides(args="--x=1")),
        Case("args name of Nexus", "customConfiguration.args[0].name", json=overrides(args=[{"name": "request-id", "value": "x"}])),
        Case("args name with dashes", "customConfiguration.args[0].name", json=overrides(args=[{"name": "--x", "value": "1"}])),
        Case("secrets not a list", "customConfiguration.secrets", json=overrides(secrets="db")),
        Case("secret not a name", "customConfiguration.secrets[0]", json=overrides(secrets=["DB_PASSWORD"])),
        Case("secret not allowed", "customConfiguration.secrets[0]", json=overrides(secrets=["db"]), status=403, code="forbidden"),
        Case("speculativeAttempts negative", "customConfiguration.speculativeAttempts", json=overrides(speculativeAttempts=-1)),
        Case("speculativeAttempts too many", "customConfiguration.speculativeAttempts", json=overrides(speculativeAttempts=1000)),
        Case("speculativeAttempts a string", "customConfiguration.speculativeAttempts", json=overrides(speculativeAttempts="2")),
        Case("speculativeAttempts a float", "customConfiguration.speculativeAttempts", json=overrides(speculativeAttempts=1.5)),
        Case("additionalWorkgroups", "customConfiguration.additionalWorkgroups: not supported", json=overrides(additionalWorkgroups={"shard-1": "second"})),
        Case("monitoringParameters", "customConfiguration.monitoringParameters: not supported", json=overrides(monitoringParameters=["latency"])),
        Case("PascalCase given twice", "customConfiguration", json=overrides(CpuLimit="1", cpuLimit="2")),
        Case("PascalCase bad value", "customConfiguration.cpuLimit", json=overrides(CpuLimit="lots")),
    ]  # fmt: skip
    async with checker(servers) as check:
        for case in cases:
            await check.refused(case)
        nothing = dict.fromkeys(
            ["imageRepository", "imageTag", "env", "secrets", "args", "additionalWorkgroups",
             "monitoringParameters", "speculativeAttempts", "customResources", "version"]
        )  # fmt: skip
        request_id = await check.system.submit(
            "echo", {**overrides(**nothing), "parentRequest": None, "tag": None}
        )
        assert (await check.metadata(request_id))["configurationOverrides"] is None
