"""Missing, expired and forged credentials on both services, over real HTTP.

Scheduler: every client route needs a bearer service token or a JWT (HS256 or RS256, issuer
and audience checked); a refused request stores nothing and leaves the server ready; a
credential limited to ``echo`` gets 403 elsewhere; probes, metrics and the OpenAPI
description need none.

Receiver: a completion must carry its run's HMAC token; anything else leaves the run as it
was. The shard is ``off`` (pods stay Pending), so runs finish only when a test completes them.
"""

from __future__ import annotations

import base64
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import jwt
import orjson
import pytest
from harness import Servers
from support.identity import Key, identity_provider, rsa_key
from support.keys import rsa_key_pair
from support.system import (
    OTHER_TOKEN,
    SIGNING_KEY,
    TOKEN,
    System,
    local_system,
    send_raw,
    template,
)

from nexus.core.checkpoints import CheckpointStore
from nexus.core.runs import NewRun, Stage, Transition
from nexus.core.signing import Signer
from nexus.core.storage import ObjectNames
from nexus_dev.cluster.emulators import ShardSpec
from receiver.settings import ReceiverSection

ISSUER = "https://issuer.example"
HS_SECRET = "hs256-secret-for-tests-0123456789abcdef"
RUN = "/algorithm/v1.2/run/echo"
VALID = {"algorithmParameters": {"x": 1}}


RSA_PRIVATE, RSA_PUBLIC = rsa_key_pair()
OTHER_RSA_PRIVATE, _ = rsa_key_pair()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "nexus",
        "sub": "jwt-caller",
        "iat": now,
        "exp": now + 600,
        "nexus/algorithms": ["*"],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def hs256(secret: str = HS_SECRET, **changes: Any) -> str:
    return jwt.encode(claims(**changes), secret, algorithm="HS256")


def rs256(private: bytes = RSA_PRIVATE, **changes: Any) -> str:
    return jwt.encode(claims(**changes), private, algorithm="RS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], secret: bytes | None, **changes: Any) -> str:
    """A JWT no library would sign: ``alg: none``, or HS256 keyed with a public key."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims(**changes)))}"
    signature = b"" if secret is None else hmac.digest(secret, signing_input.encode(), "sha256")
    return f"{signing_input}.{_b64(signature)}"


@asynccontextmanager
async def running(
    servers: Servers,
    **options: Any,
) -> AsyncIterator[System]:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo", inline=False), template("other", inline=False)],
        **options,
    ) as system:
        yield system


async def expect_refused(
    system: System,
    case: str,
    status: int,
    names: str,
    *,
    method: str = "POST",
    path: str = RUN,
    authorization: str | None,
    json: Any = VALID,
) -> None:
    """A 401/403 JSON error naming ``names``; nothing stored; the scheduler still ready."""
    before = await system.stored()
    headers = {} if authorization is None else {"Authorization": authorization}
    answer, body, sent = await system.call(method, path, token=None, headers=headers, json=json)
    where = f"case {case!r}: {answer} {body!r}"
    assert answer == status, where
    assert isinstance(body, dict) and set(body) == {"error", "message"}, where
    assert body["error"] == ("unauthorized" if status == 401 else "forbidden"), where
    assert names in body["message"], where
    if status == 401:
        assert sent.get("WWW-Authenticate", "").startswith("Bearer"), where
    assert await system.stored() == before, f"case {case!r} stored something"
    ready, body, _ = await system.call("GET", "/health/ready", token=None)
    assert ready == 200, f"after case {case!r}: {ready} {body!r}"


async def accepted(system: System, case: str, authorization: str, algorithm: str = "echo") -> str:
    status, body, _ = await system.call(
        "POST",
        f"/algorithm/v1.2/run/{algorithm}",
        token=None,
        headers={"Authorization": authorization},
        json=VALID,
    )
    assert status == 202, f"case {case!r}: {status} {body!r}"
    return str(body["requestId"])


# -- scheduler ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_scheduler_refuses_missing_and_bad_credentials(servers: Servers) -> None:
    auth = {"jwt_hs256_secret": HS_SECRET, "jwt_rs256_public_key": RSA_PUBLIC, "jwt_issuer": ISSUER}
    past = int(time.time()) - 3600
    refused = [
        ("no Authorization header", None, "Authorization"),
        ("empty header", "", "Authorization"),
        ("Basic scheme", "Basic dGVzdDp0ZXN0", "Bearer"),
        ("Token scheme", f"Token {TOKEN}", "Bearer"),
        ("Bearer alone", "Bearer", "Bearer"),
        ("Bearer and spaces", "Bearer    ", "Bearer"),
        ("unknown token", "Bearer not-a-known-token", "not valid"),
        ("token with a suffix", f"Bearer {TOKEN}x", "not valid"),
        ("three dots but no JWT", "Bearer a.b.c", "JWT"),
        ("HS256 with a wrong secret", f"Bearer {hs256('another-secret-0123456789abcdef-0123')}", "JWT"),
        ("RS256 with another key", f"Bearer {rs256(OTHER_RSA_PRIVATE)}", "JWT"),
        ("expired HS256", f"Bearer {hs256(exp=past, iat=past - 60)}", "expired"),
        ("expired RS256", f"Bearer {rs256(exp=past, iat=past - 60)}", "expired"),
        ("wrong issuer", f"Bearer {hs256(iss='https://elsewhere.example')}", "JWT"),
        ("wrong audience", f"Bearer {rs256(aud='someone-else')}", "JWT"),
        ("no expiry", f"Bearer {hs256(exp=None)}", "JWT"),
        ("no subject", f"Bearer {hs256(sub=None)}", "JWT"),
        ("not valid yet", f"Bearer {hs256(nbf=int(time.time()) + 3600)}", "JWT"),
        ("algorithms claim a number", f"Bearer {hs256(**{'nexus/algorithms': 5})}", "nexus/algorithms"),
        ("alg none", f"Bearer {handmade({'alg': 'none', 'typ': 'JWT'}, None)}", "none"),
        ("alg HS512", f"Bearer {jwt.encode(claims(), HS_SECRET * 2, algorithm='HS512')}", "HS512"),
    ]  # fmt: skip
    async with running(servers, auth=auth) as system:
        for case, authorization, names in refused:
            await expect_refused(system, case, 401, names, authorization=authorization)

        # an unauthenticated caller learns nothing, not even whether an algorithm exists
        for path in ("/algorithm/v1.2/run/nosuch", "/algorithm/v1.2/run/other"):
            await expect_refused(system, f"no token, {path}", 401, "Authorization", path=path, authorization=None)  # fmt: skip

        # valid credentials of every kind
        await accepted(system, "service token", f"Bearer {TOKEN}")
        await accepted(system, "lower-case scheme", f"bearer {TOKEN}")
        await accepted(system, "HS256", f"Bearer {hs256()}")
        await accepted(system, "expired within the leeway", f"Bearer {hs256(exp=int(time.time()) - 5)}")  # fmt: skip
        request_id = await accepted(system, "RS256", f"Bearer {rs256(sub='rs-caller')}")
        (
            status,
            body,
        ) = await system.get(  # its caller reads it (no other: tests/e2e/test_isolation.py)
            f"/algorithm/v1.2/metadata/echo/requests/{request_id}", rs256(sub="rs-caller")
        )
        assert (status, body["caller"]) == (200, "rs-caller"), (status, body)
        # a subject the checkpoint cannot hold: bad input, and nothing stored
        before = await system.stored()
        nul = {"Authorization": f"Bearer {hs256(sub='a' + chr(0) + 'b')}"}
        status, body, _ = await system.call("POST", RUN, token=None, headers=nul, json=VALID)
        assert (status, body["error"]) == (400, "invalid_request"), (status, body)
        assert "cannot be stored" in body["message"] and await system.stored() == before
        assert "UTF8" not in body["message"] and "0x00" not in body["message"]  # not the store's
        # accepted again (the JWT cache itself: tests/test_authentication.py)
        twice = f"Bearer {hs256(sub='cached')}"
        await accepted(system, "HS256 once", twice)
        await accepted(system, "HS256 again", twice)

        # credentials that may run only echo
        only_echo = [
            ("limited token", f"Bearer {OTHER_TOKEN}"),
            ("JWT allowed echo", f"Bearer {rs256(**{'nexus/algorithms': ['echo']})}"),
            ("JWT claim as a string", f"Bearer {hs256(**{'nexus/algorithms': 'echo'})}"),
        ]
        for case, authorization in only_echo:
            await accepted(system, case, authorization)
            for algorithm in ("other", "nosuch"):
                await expect_refused(system, f"{case} on {algorithm}", 403, repr(algorithm), path=f"/algorithm/v1.2/run/{algorithm}", authorization=authorization)  # fmt: skip
        no_claim = f"Bearer {hs256(**{'nexus/algorithms': None})}"
        await expect_refused(
            system, "JWT without algorithms", 403, "'echo'", authorization=no_claim
        )

        # every client route needs a credential, and the right one
        other = await system.submit("other")
        routes = [
            ("GET", f"/algorithm/v1.2/results/other/requests/{other}"),
            ("GET", "/algorithm/v1.2/results/other/tags/some-tag"),
            ("GET", f"/algorithm/v1.2/metadata/other/requests/{other}"),
            ("GET", f"/algorithm/v1.2/payload/other/requests/{other}"),
            ("POST", f"/algorithm/v1.2/cancel/other/requests/{other}"),
        ]
        for method, path in routes:
            for case, authorization, status, names in (
                ("no token", None, 401, "Authorization"),
                ("unknown token", "Bearer nope", 401, "not valid"),
                ("expired JWT", f"Bearer {hs256(exp=past)}", 401, "expired"),
                ("limited token", f"Bearer {OTHER_TOKEN}", 403, "'other'"),
            ):
                await expect_refused(system, f"{case}: {method} {path}", status, names, method=method, path=path, authorization=authorization, json={})  # fmt: skip
        assert (await system.result("other", other))["status"] in ("BUFFERED", "RUNNING")
        # the inline-input link is signed instead: without its signature it is refused
        status, body, _ = await system.call(
            "GET", f"/algorithm/v1.2/payload/other/requests/{other}/content", token=None
        )
        assert status == 403 and body["error"] == "forbidden", (status, body)

        # probes, metrics and the API description need nothing (and ignore a bad token)
        for path in ("/health/live", "/health/ready", "/metrics", "/openapi.json"):
            for authorization in (None, "Bearer nope"):
                headers = {} if authorization is None else {"Authorization": authorization}
                status, body, _ = await system.call("GET", path, token=None, headers=headers)
                assert status == 200, (path, authorization, status, body)


async def test_scheduler_with_only_rs256_refuses_hs256(servers: Servers) -> None:
    auth = {"jwt_rs256_public_key": RSA_PUBLIC, "jwt_issuer": ISSUER}
    confused = handmade({"alg": "HS256", "typ": "JWT"}, RSA_PUBLIC.encode())
    async with running(servers, auth=auth) as system:
        await accepted(system, "RS256", f"Bearer {rs256()}")
        await expect_refused(system, "HS256", 401, "HS256", authorization=f"Bearer {hs256()}")
        await expect_refused(
            system, "HS256 keyed with the public key", 401, "HS256", authorization=f"Bearer {confused}"
        )  # fmt: skip
        # credentials that are not even text: never a 5xx
        before = await system.stored()
        for raw in (b"Bearer \xff\xfe\xfd", b"Bearer \xc3\xa9t\xc3\xa9", b"Bearer a.\xff.c"):
            request = (
                f"POST {RUN} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(orjson.dumps(VALID))}\r\nConnection: close\r\n"
            ).encode()
            request += b"Authorization: " + raw + b"\r\n\r\n" + orjson.dumps(VALID)
            status, body = await send_raw(system.url, request)
            assert status == 401, (raw, status, body)
            assert body["error"] == "unauthorized", (raw, body)
        assert await system.stored() == before


async def test_scheduler_with_an_identity_provider_that_starts_down(servers: Servers) -> None:
    """OIDC discovery against a provider on loopback that is down when the scheduler starts:
    the scheduler starts anyway, serves service tokens and static-key JWTs, answers JWTs
    that need the provider's keys with 503; once the provider is back, they are accepted,
    and a rotation to a new key is followed."""
    key_a, key_b = rsa_key("A"), rsa_key("B")
    async with identity_provider() as provider:
        provider.served, provider.mode = [key_a.jwk], "unreachable"
        auth = {
            "jwt_hs256_secret": HS_SECRET,
            "jwt_issuer": provider.issuer,
            "jwt_oidc_discovery": True,
            "jwt_jwks_min_interval": 0,  # real time here: let every unknown kid fetch
        }

        def signed(key: Key, kid: str | None = None, **changes: Any) -> str:
            header = {"kid": kid} if kid else {}
            return "Bearer " + key.sign(claims(iss=provider.issuer, **changes), "RS256", **header)

        async with running(servers, auth=auth) as system:
            await accepted(system, "service token", f"Bearer {TOKEN}")
            await accepted(system, "HS256", f"Bearer {hs256(iss=provider.issuer)}")
            before = await system.stored()
            headers = {"Authorization": signed(key_a)}
            status, body, sent = await system.call(
                "POST", RUN, token=None, headers=headers, json=VALID
            )
            assert (status, body["error"], sent.get("Retry-After")) == (503, "unavailable", "5")
            assert "identity provider" in body["message"] and await system.stored() == before

            provider.mode = "up"
            request_id = await accepted(
                system, "RS256 of the provider", signed(key_a, sub="oidc-user")
            )
            status, body = await system.get(
                f"/algorithm/v1.2/metadata/echo/requests/{request_id}",
                signed(key_a, sub="oidc-user")[len("Bearer ") :],
            )
            assert (status, body["caller"]) == (200, "oidc-user"), (status, body)
            provider.served = [key_a.jwk, key_b.jwk]
            await accepted(system, "after a rotation", signed(key_b))
            await expect_refused(system, "an unknown kid", 401, "no signing key", authorization=signed(key_b, kid="C"))  # fmt: skip
            confused = handmade(
                {"alg": "HS256", "kid": "A"}, HS_SECRET.encode(), iss=provider.issuer
            )
            await expect_refused(system, "HS256 under the provider's kid", 401, "does not sign with HS256", authorization=f"Bearer {confused}")  # fmt: skip


# -- receiver ----------------------------------------------------------------------------

SIGNER = Signer((SIGNING_KEY,))


def completion(algorithm: str, request_id: str) -> str:
    return f"/algorithm/v1.2/complete/{algorithm}/requests/{request_id}"


async def complete(
    system: System,
    algorithm: str,
    request_id: str,
    body: Any,
    *,
    authorization: str | None = "token",
    data: bytes | None = None,
) -> tuple[int, Any]:
    """POST a completion; ``authorization="token"`` sends the run's own token."""
    if authorization == "token":
        authorization = f"Bearer {SIGNER.run_token(algorithm, request_id)}"
    headers = {} if authorization is None else {"Authorization": authorization}
    options: dict[str, Any] = {"data": data} if data is not None else {"json": body}
    status, answer, _ = await system.call(
        "POST",
        completion(algorithm, request_id),
        base=system.receiver_url,
        token=None,
        headers=headers,
        **options,
    )
    return status, answer


async def run_state(system: System, algorithm: str, request_id: str) -> dict[str, Any]:
    status, body = await system.get(f"/algorithm/v1.2/metadata/{algorithm}/requests/{request_id}")
    assert status == 200, (status, body)
    keep = ("lifecycleStage", "resultUri", "algorithmFailureCause", "algorithmFailureDetails")
    return {k: body[k] for k in keep}


async def test_receiver_accepts_only_the_runs_own_token(servers: Servers) -> None:
    async with running(servers) as system:
        first, second = await system.submit("echo"), await system.submit("echo")
        other = await system.submit("other")
        # once dispatched (pods stay Pending), nothing but a completion moves the run
        await system.wait_for("echo", first, "RUNNING")
        before = await run_state(system, "echo", first)
        assert before["lifecycleStage"] == "RUNNING", before
        success = {"cause": None, "message": None, "sasUri": "https://results.example/r"}
        token = SIGNER.run_token("echo", first)
        refused = [
            ("no token", None, 401),
            ("forged token", "Bearer forged-token-value", 401),
            ("empty bearer", "Bearer ", 401),
            ("another run's token", f"Bearer {SIGNER.run_token('echo', second)}", 401),
            ("another algorithm's token", f"Bearer {SIGNER.run_token('other', first)}", 401),
            ("token of another key", f"Bearer {Signer(('another-signing-key-000',)).run_token('echo', first)}", 401),
            ("Basic scheme", f"Basic {token}", 401),
            ("a service token", f"Bearer {TOKEN}", 401),
        ]  # fmt: skip
        for case, authorization, status in refused:
            answer, body = await complete(system, "echo", first, success, authorization=authorization)  # fmt: skip
            assert answer == status, (case, answer, body)
            assert body["error"] == "unauthorized" and body["message"], (case, body)
            assert await run_state(system, "echo", first) == before, case

        # a valid token for a run that does not exist proves only that nothing is stored
        missing = str(uuid.uuid4())
        answer, body = await complete(system, "echo", missing, success)
        assert answer == 404 and missing in body["message"], (answer, body)
        answer, body = await complete(system, "echo", other, success)  # other is not echo's
        assert answer == 404, (answer, body)

        malformed = [
            ("not JSON", b"{", "JSON"),
            ("empty body", b"", "empty"),
            ("an array", b"[]", "JSON object"),
            ("cause a number", b'{"cause": 5}', "cause"),
            ("errorCause a list", b'{"errorCause": ["x"]}', "errorCause"),
            ("message an object", b'{"cause": "x", "message": {}}', "message"),
            ("sasUri not a URL", b'{"sasUri": "ftp://host/x"}', "sasUri"),
            ("resultUri a number", b'{"resultUri": 5}', "resultUri"),
            ("sasUri with NUL", b'{"sasUri": "https://host/\\u0000"}', "sasUri"),
            ("sasUri too long", orjson.dumps({"sasUri": "https://h/" + "x" * 5000}), "sasUri"),
            ("sasUri without a host", b'{"sasUri": "https:///x"}', "sasUri"),
        ]
        # Nexus presigns what its own bucket holds: a run may name its own result, no other
        bucket = ObjectNames(system.base_settings.storage)
        for case, uri in (
            ("another run's input", bucket.uri(bucket.input_key("echo", second))),
            ("another run's result", bucket.uri(bucket.result_key("echo", second))),
            ("another object", bucket.uri("elsewhere/data")),
            ("another run's input, S3://", "S3" + bucket.uri(bucket.input_key("echo", second))[2:]),
        ):
            malformed.append((case, orjson.dumps({"resultUri": uri, "errorCause": ""}), "sasUri"))
        for case, data, names in malformed:
            answer, body = await complete(system, "echo", first, None, data=data)
            assert answer == 400, (case, answer, body)
            assert names in body["message"], (case, body)
            assert await run_state(system, "echo", first) == before, case

        for case, path in (
            ("upper-case algorithm", completion("Echo", first)),
            ("encoded dot dot", completion("%2e%2e", first)),
            ("algorithm with a newline", completion("echo%0A", first)),
            ("request id not a UUID", completion("echo", "not-a-uuid")),
            ("request id with NUL", completion("echo", f"{first}%00")),
        ):
            answer, body, _ = await system.call("POST", path, base=system.receiver_url, token=token, json=success)  # fmt: skip
            assert answer in (400, 404), (case, answer, body)
            assert set(body) == {"error", "message"}, (case, body)
        # a token that is not even text
        request = (
            f"POST {completion('echo', first)} HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n"
        ).encode() + b"Authorization: Bearer \xff\xfe\r\n\r\n{}"
        answer, body = await send_raw(system.receiver_url, request)
        assert answer == 401, (answer, body)
        assert await run_state(system, "echo", first) == before

        # the current shape: success with a location of its own
        answer, body = await complete(system, "echo", first, success)
        assert (answer, body["status"]) == (200, "COMPLETED"), (answer, body)
        done = await system.result("echo", first)
        assert done["resultUri"] == success["sasUri"] and done["runErrorMessage"] is None, done
        # the older shape: a failure (a NUL in a message is kept as U+FFFD)
        failure = {"errorCause": "OOMKilled", "errorDetails": "out of\u0000memory", "resultUri": None}  # fmt: skip
        answer, body = await complete(system, "echo", second, failure)
        assert (answer, body["status"]) == (200, "FAILED"), (answer, body)
        failed = await system.result("echo", second)
        assert failed["runErrorMessage"] == "OOMKilled: out of\ufffdmemory", failed
        assert failed["resultUri"] is None, failed

        # a finished run is not changed again; the answer says what it is
        finished = {first: await run_state(system, "echo", first), second: await run_state(system, "echo", second)}  # fmt: skip
        for request_id, body_again, status in (
            (first, {"cause": "late", "message": "too late"}, "COMPLETED"),
            (first, {"sasUri": "https://results.example/other"}, "COMPLETED"),
            (second, {"resultUri": "https://results.example/late"}, "FAILED"),
            (second, {"errorCause": "again"}, "FAILED"),
        ):
            answer, body = await complete(system, "echo", request_id, body_again)
            assert (answer, body) == (200, {"requestId": request_id, "status": status}), body
            assert await run_state(system, "echo", request_id) == finished[request_id]

        # the older shape's success, and a success without a location (the default one)
        answer, body = await complete(system, "other", other, {"resultUri": "https://r.example/o", "errorCause": None})  # fmt: skip
        assert (answer, body["status"]) == (200, "COMPLETED"), (answer, body)
        assert (await run_state(system, "other", other))["resultUri"] == "https://r.example/o"
        third = await system.submit("echo")
        answer, body = await complete(system, "echo", third, {})
        assert (answer, body["status"]) == (200, "COMPLETED"), (answer, body)
        stored = (await run_state(system, "echo", third))["resultUri"]
        assert stored.endswith(f"results/algorithm=echo/{third}"), stored

        # every field sent, empty or blank: a success at the default location, or at its
        # own location named, which clients get presigned
        for shape in ("current", "older"):
            request_id = await system.submit("echo")
            own = bucket.uri(bucket.result_key("echo", request_id))
            empty = (
                {"cause": "", "message": "", "sasUri": " "}
                if shape == "current"
                else {"errorCause": " ", "errorDetails": "", "resultUri": own}
            )
            answer, body = await complete(system, "echo", request_id, empty)
            assert (answer, body["status"]) == (200, "COMPLETED"), (empty, answer, body)
            assert (await run_state(system, "echo", request_id))["resultUri"] == own, shape
            link = (await system.result("echo", request_id))["resultUri"]
            assert link.startswith("http") and "X-Amz-Signature=" in link, link

        # a result stored before such locations were refused is not handed to clients;
        # a run still NEW was never sent: its completion is refused, and says why
        fourth = await system.submit("echo")
        another = bucket.uri(bucket.input_key("echo", second))
        unsent = NewRun(
            algorithm="echo", id=uuid.uuid4(), stage=Stage.NEW, caller="tester",
            received_by_host="elsewhere", applied_configuration={},
            payload_valid_for=timedelta(hours=1), payload_inline=b"{}",
        )  # fmt: skip
        store = await CheckpointStore.open(system.base_settings.postgres)
        try:
            change = Transition("echo", uuid.UUID(fourth), Stage.COMPLETED, result_uri=another)
            assert await store.transition(change)
            await store.insert(unsent)
        finally:
            await store.close()
        assert (await system.result("echo", fourth))["resultUri"] is None
        answer, body = await complete(system, "echo", str(unsent.id), {})
        assert (answer, body["error"]) == (409, "conflict") and "NEW" in body["message"], body
        assert (await run_state(system, "echo", str(unsent.id)))["lifecycleStage"] == "NEW"


async def test_receiver_admits_tokenless_completions_only_when_configured(servers: Servers) -> None:
    async with running(
        servers,
        receiver=ReceiverSection(allow_tokenless_completions=True),
    ) as system:
        first, second = await system.submit("echo"), await system.submit("echo")
        answer, body = await complete(system, "echo", first, {"cause": None}, authorization=None)
        assert (answer, body["status"]) == (200, "COMPLETED"), (answer, body)
        # a token, when one is sent, must still be the run's own
        answer, body = await complete(
            system, "echo", second, {}, authorization="Bearer forged-token-value"
        )
        assert answer == 401, (answer, body)
        assert (await system.result("echo", second))["status"] in ("BUFFERED", "RUNNING")
        answer, body = await complete(system, "echo", second, {"cause": "Crashed"})
        assert (answer, body["status"]) == (200, "FAILED"), (answer, body)


def test_run_tokens_are_bound_to_algorithm_and_run() -> None:
    run = str(uuid.uuid4())
    token = SIGNER.run_token("echo", run)
    assert SIGNER.check_run_token("echo", run, token)
    assert not SIGNER.check_run_token("other", run, token)
    assert not SIGNER.check_run_token("echo", str(uuid.uuid4()), token)
    # rotation: a new first key signs, the old one still verifies
    rotated = Signer(("a-brand-new-signing-key-0000", SIGNING_KEY))
    assert rotated.check_run_token("echo", run, token)
    assert rotated.run_token("echo", run) != token
