"""Object storage with credentials from the default chain, renewed, against real SeaweedFS.

The chain is botocore's (through aiobotocore), configured the way a deployment does it:
environment variables, or a profile whose ``credential_process`` — a small script written
here — hands out keys with a short expiry and rotates them when the test says so. The
SeaweedFS server of this module accepts two rotating keys (and its own), so URLs signed
before and after a rotation must both work, and a URL signed with a key it does not know,
or altered, must not. Its gateway also serves virtual-host-style requests
(``bucket.s3.nexus.test``), reached through a resolver that sends every name to loopback.

Session tokens are checked by a SeaweedFS of its own that runs an STS: the web identity
path EKS IRSA uses (a service-account JWT of an OIDC provider on loopback, traded for
temporary credentials) is followed end to end, and the server refuses a URL without its
token or with another session's.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiobotocore.session import get_session
from aiohttp.abc import AbstractResolver, ResolveResult
from harness import S3Bucket, bucket_name
from prometheus_client import REGISTRY
from support.identity import identity_provider, rsa_key
from yarl import URL

from nexus.core import sigv4
from nexus.core.config import StorageSettings
from nexus.core.errors import ConfigError, StorageUnavailable
from nexus.core.storage import PayloadStore
from nexus.core.storagecredentials import StorageCredentials
from nexus_dev.servers.s3 import LocalS3

KEY_A = ("rotating-a", secrets.token_urlsafe(24))
KEY_B = ("rotating-b", secrets.token_urlsafe(24))
UNKNOWN = ("rotating-c", secrets.token_urlsafe(24))
DOMAIN = "s3.nexus.test"

CREDENTIAL_PROCESS = """\
import datetime, json, pathlib, sys

state = pathlib.Path(sys.argv[1])
runs = state / "runs"
runs.write_text(str(int(runs.read_text()) + 1 if runs.exists() else 1))
gate = state / "gate"
if gate.exists():  # a FIFO: wait until the test lets this run finish
    gate.read_text()
handed = (state / "key").read_text()
if handed == "fail":
    sys.exit("the identity provider is down")
key, secret, lifetime = handed.split()
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=float(lifetime))
print(json.dumps({
    "Version": 1, "AccessKeyId": key, "SecretAccessKey": secret,
    "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
}))
"""

SHORT = 12 * 60
"""Seconds of validity a rotation hands out: inside botocore's 15-minute advisory window,
so each time the chain is asked, it runs the process for new credentials."""


@pytest.fixture(scope="module")
def seaweedfs() -> Iterator[LocalS3]:
    server = LocalS3(extra_keys=[KEY_A, KEY_B], domain_name=DOMAIN)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def bucket(seaweedfs: LocalS3, request: pytest.FixtureRequest) -> Iterator[S3Bucket]:
    made = S3Bucket(seaweedfs.info, bucket_name(request.node.name))
    made.create()
    try:
        yield made
    finally:
        made.delete()


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A process environment in which the chain finds nothing: no variables, no files, no
    instance metadata (so nothing reaches out to 169.254.169.254)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@dataclass
class Rotation:
    """The state the credential_process script reads: which key it hands out."""

    state: Path

    def hand_out(self, key: tuple[str, str], lifetime: float = SHORT) -> None:
        (self.state / "key").write_text(f"{key[0]} {key[1]} {lifetime}")

    def fail(self) -> None:
        (self.state / "key").write_text("fail")

    @property
    def runs(self) -> int:
        path = self.state / "runs"
        return int(path.read_text()) if path.exists() else 0


@pytest.fixture
def rotation(no_credentials: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Rotation:
    """A profile whose credential_process hands out KEY_A until told otherwise."""
    state = tmp_path / "state"
    state.mkdir()
    script = tmp_path / "credential_process.py"
    script.write_text(CREDENTIAL_PROCESS)
    config = tmp_path / "aws-config"
    config.write_text(
        f"[profile rotating]\ncredential_process = {sys.executable} {script} {state}\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "rotating")
    rotation = Rotation(state)
    rotation.hand_out(KEY_A)
    return rotation


def chain_settings(s3: S3Bucket, **changes: Any) -> StorageSettings:
    """Settings without keys: the default credential chain provides them."""
    return StorageSettings(
        endpoint_url=s3.endpoint_url, region=s3.region, bucket=s3.bucket, **changes
    )


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def status_of(http: aiohttp.ClientSession, method: str, url: str, body: bytes = b"") -> int:
    async with http.request(method, URL(url, encoded=True), data=body or None) as answer:
        await answer.read()
        return answer.status


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


# -- the chain, at start --------------------------------------------------------------------


async def test_keys_from_the_environment_sign_everything(
    no_credentials: None, monkeypatch: pytest.MonkeyPatch, bucket: S3Bucket, http: Any
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_B[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEY_B[1])
    store = await PayloadStore.open(chain_settings(bucket))
    try:
        assert store.credentials.method == "env" and not store.credentials.refreshable
        await store.put("a", b"from the environment")  # the upload route
        assert await store.get("a") == b"from the environment"  # the aiobotocore client
        url = store.presign_get("a", 60)
        assert query_of(url)["X-Amz-Credential"].startswith(f"{KEY_B[0]}/")
        assert await status_of(http, "GET", url) == 200
    finally:
        await store.close()


@pytest.mark.usefixtures("no_credentials")
async def test_no_credentials_anywhere_is_a_configuration_error(bucket: S3Bucket) -> None:
    with pytest.raises(ConfigError, match=r"NEXUS__STORAGE__ACCESS_KEY_ID .* no credentials"):
        await PayloadStore.open(chain_settings(bucket))


async def test_a_credential_process_that_fails_at_start_is_storage_unavailable(
    rotation: Rotation, bucket: S3Bucket
) -> None:
    rotation.fail()
    with pytest.raises(StorageUnavailable, match="identity provider is down"):
        await PayloadStore.open(chain_settings(bucket))


# -- rotation -------------------------------------------------------------------------------


async def test_urls_signed_before_and_after_a_rotation_are_accepted(
    rotation: Rotation, bucket: S3Bucket, http: aiohttp.ClientSession
) -> None:
    store = await PayloadStore.open(chain_settings(bucket))
    try:
        assert store.credentials.method == "custom-process" and store.credentials.refreshable
        assert store.credentials.signer.access_key_id == KEY_A[0]
        put_a = store.presign_put("before", 600)
        assert await status_of(http, "PUT", put_a, b"signed with A") == 200
        get_a = store.presign_get("before", 600)
        await store.put("uploaded-a", b"upload with A")

        rotation.hand_out(KEY_B)
        runs = rotation.runs
        assert await store.credentials.refresh() is True  # what the background task does
        assert rotation.runs > runs
        assert store.credentials.signer.access_key_id == KEY_B[0]
        put_b = store.presign_put("after", 600)
        get_b = store.presign_get("after", 600)
        assert query_of(put_b)["X-Amz-Credential"].startswith(f"{KEY_B[0]}/")
        assert await status_of(http, "PUT", put_b, b"signed with B") == 200
        assert await status_of(http, "GET", get_b) == 200
        assert await status_of(http, "GET", get_a) == 200  # handed out before: still good
        await store.put("uploaded-b", b"upload with B")
        assert await store.get("uploaded-a") == b"upload with A"
        assert bucket.get("uploaded-b") == b"upload with B"

        # B's signature under A's name, A's URL pointed at another object, a key
        # SeaweedFS does not know, and a signature one digit off: all refused
        wrong_name = put_b.replace(f"Credential={KEY_B[0]}", f"Credential={KEY_A[0]}")
        other_object = get_a.replace("/before?", "/after?")
        signature = query_of(get_b)["X-Amz-Signature"]
        off_by_one = get_b.replace(signature, ("1" if signature[0] == "0" else "0") + signature[1:])
        for forged in (wrong_name, other_object, off_by_one):
            method = "PUT" if forged is wrong_name else "GET"
            assert await status_of(http, method, forged, b"forged") == 403, forged
        foreign = sigv4.Signer(*UNKNOWN, bucket.region).presign_object(
            "GET", bucket.endpoint_url, bucket.bucket, "after", expires_in=60
        )
        assert await status_of(http, "GET", foreign) == 403
        assert bucket.get("after") == b"signed with B"
    finally:
        await store.close()


async def test_a_renewal_in_progress_does_not_hold_up_presigning(
    rotation: Rotation, bucket: S3Bucket, http: aiohttp.ClientSession
) -> None:
    """The credential process hangs (a FIFO it reads until the test writes): meanwhile the
    event loop keeps turning and presigns with the credentials in use."""
    store = await PayloadStore.open(chain_settings(bucket))
    try:
        gate = rotation.state / "gate"
        os.mkfifo(gate)
        rotation.hand_out(KEY_B)
        renewal = asyncio.create_task(store.credentials.refresh())
        # opening a FIFO for writing returns once the process has opened it for reading
        writer = await asyncio.wait_for(asyncio.to_thread(gate.open, "w"), 30)
        try:
            assert not renewal.done()
            url = store.presign_put("during", 600)
            assert query_of(url)["X-Amz-Credential"].startswith(f"{KEY_A[0]}/")
            assert await status_of(http, "PUT", url, b"during a renewal") == 200
        finally:
            gate.unlink()
            writer.close()
        assert await asyncio.wait_for(renewal, 30) is True
        assert store.credentials.signer.access_key_id == KEY_B[0]
    finally:
        await store.close()


def seaweedfs_sts(identity_provider_url: str, session: str) -> dict[str, Any]:
    """SeaweedFS' IAM configuration: an STS handing out sessions of ``session`` (a
    duration) to holders of a JWT of the identity provider, for a role allowed all of S3."""
    return {
        "sts": {
            "tokenDuration": session,
            "maxSessionLength": "12h",
            "issuer": "seaweedfs-sts",
            "signingKey": base64.b64encode(secrets.token_bytes(32)).decode(),
        },
        "providers": [
            {
                "name": "cluster-oidc",
                "type": "oidc",
                "enabled": True,
                "config": {
                    "issuer": identity_provider_url,
                    "clientId": "sts.amazonaws.com",
                    "jwksUri": f"{identity_provider_url}/keys",
                },
            }
        ],
        "policy": {"defaultEffect": "Deny"},
        "roles": [
            {
                "roleName": "nexus",
                "roleArn": ROLE,
                "trustPolicy": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Federated": "cluster-oidc"},
                            "Action": ["sts:AssumeRoleWithWebIdentity"],
                        }
                    ],
                },
                "attachedPolicies": ["storage"],
            }
        ],
        "policies": [
            {
                "name": "storage",
                "document": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": ["s3:*"],
                            "Resource": ["arn:aws:s3:::*", "arn:aws:s3:::*/*"],
                        }
                    ],
                },
            }
        ],
    }


ROLE = "arn:aws:iam::role/nexus"


async def test_web_identity_as_eks_irsa_provides_it(
    no_credentials: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http: Any
) -> None:
    """The whole IRSA path on real servers: a service-account JWT of the cluster's OIDC
    provider in a file, botocore's web identity provider trading it at SeaweedFS' STS for
    temporary credentials (a 12-minute session: renewed whenever asked), and SeaweedFS
    checking the session token of every upload, read and presigned URL."""
    cluster_key = rsa_key("cluster")
    async with identity_provider() as cluster_oidc:
        cluster_oidc.served = [cluster_key.jwk]
        server = LocalS3(iam_config=seaweedfs_sts(cluster_oidc.issuer, "12m"))
        info = await asyncio.to_thread(server.start)
        try:
            assert info.call("PUT", "irsa").status == 200
            now = int(time.time())
            service_account = {
                "iss": cluster_oidc.issuer,
                "aud": "sts.amazonaws.com",
                "sub": "system:serviceaccount:nexus:nexus-scheduler",
                "iat": now,
                "exp": now + 3600,
            }
            token_file = tmp_path / "token"
            token_file.write_text(cluster_key.sign(service_account, "RS256"))
            monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
            monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
            monkeypatch.setenv("AWS_ENDPOINT_URL_STS", info.endpoint_url)
            settings = StorageSettings(endpoint_url=info.endpoint_url, bucket="irsa")
            store = await PayloadStore.open(settings)
            try:
                credentials = store.credentials
                assert credentials.method == "assume-role-with-web-identity"
                first = credentials.signer
                assert first.session_token and first.access_key_id != info.access_key_id
                await store.put("input", b"uploaded with a session token")
                assert await store.get("input") == b"uploaded with a session token"
                get = store.presign_get("input", 600)
                assert query_of(get)["X-Amz-Security-Token"] == first.session_token
                assert await status_of(http, "GET", get) == 200
                put = store.presign_put("result", 600)
                assert await status_of(http, "PUT", put, b"from a container") == 200

                assert await credentials.refresh() is True  # a new session
                second = credentials.signer
                assert second.session_token != first.session_token
                assert second.access_key_id != first.access_key_id
                renewed = store.presign_get("result", 600)
                assert await status_of(http, "GET", renewed) == 200
                assert await status_of(http, "GET", get) == 200  # the first session's URL

                without_token = sigv4.Signer(second.access_key_id, second.secret_access_key)
                bare = without_token.presign_object(
                    "GET", info.endpoint_url, "irsa", "result", expires_in=60
                )
                other_token = renewed.replace(
                    quote(second.session_token, safe=""), quote(first.session_token, safe="")
                )
                assert other_token != renewed
                for forged in (bare, other_token):
                    assert await status_of(http, "GET", forged) == 403
            finally:
                await store.close()
        finally:
            await asyncio.to_thread(server.close)


class StepClock:
    """The background task's sleep, ended by the test: each sleep is recorded and waits
    for its event, which :meth:`next_sleep` hands to the test."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self._sleeping: asyncio.Queue[asyncio.Event] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        woken = asyncio.Event()
        self._sleeping.put_nowait(woken)
        await woken.wait()

    async def next_sleep(self) -> asyncio.Event:
        """The event that ends the task's next sleep, once it has begun."""
        return await asyncio.wait_for(self._sleeping.get(), 30)


def refreshes(outcome: str) -> float:
    found = REGISTRY.get_sample_value(
        "nexus_storage_credential_refreshes_total", {"outcome": outcome}
    )
    return found or 0.0


async def test_the_background_task_renews_and_outlives_a_failing_provider(
    rotation: Rotation, caplog: pytest.LogCaptureFixture
) -> None:
    """Credentials with 5 minutes left are inside botocore's mandatory window: a failure to
    renew them is an error the task must survive, retrying sooner, then at its pace again."""
    rotation.hand_out(KEY_A, lifetime=300)
    source = await get_session().get_credentials()
    assert source is not None
    clock = StepClock()
    credentials = await StorageCredentials.from_source(source, "us-east-1", sleep=clock.sleep)
    failed_before, rotated_before = refreshes("failed"), refreshes("rotated")
    credentials.start()
    try:
        sleeping = await clock.next_sleep()
        rotation.fail()
        with caplog.at_level(logging.WARNING, logger="nexus.core.storagecredentials"):
            for _ in range(3):  # asks, fails, sleeps less
                sleeping.set()
                sleeping = await clock.next_sleep()
        assert credentials.signer.access_key_id == KEY_A[0]  # the old ones stay in use
        assert refreshes("failed") - failed_before == 3
        ours = [r for r in caplog.records if r.name == "nexus.core.storagecredentials"]
        assert [r.failures for r in ours] == [1, 2, 3]  # type: ignore[attr-defined]
        assert "identity provider is down" in ours[0].error  # type: ignore[attr-defined]
        rotation.hand_out(KEY_B, lifetime=300)
        sleeping.set()
        await clock.next_sleep()
        assert credentials.signer.access_key_id == KEY_B[0]
        assert refreshes("rotated") - rotated_before == 1
        # first the pace, then 1, 2, 4 s after the failures, then the pace again
        assert clock.slept == [60.0, 1.0, 2.0, 4.0, 60.0]
    finally:
        await credentials.close()


class Unreachable:
    """A credential source whose provider never answers."""

    method = "unreachable"

    async def get_frozen_credentials(self) -> Any:
        raise OSError("no route to the identity provider")


class Enough(Exception):
    pass


async def test_the_retry_delay_is_capped_however_long_the_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) > 10_000:
            raise Enough

    credentials = StorageCredentials(sigv4.Signer("k", "s"), Unreachable(), sleep=sleep)
    with caplog.at_level(logging.ERROR), pytest.raises(Enough):
        await credentials.keep_fresh()
    assert slept[:8] == [60.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert max(slept) == 60.0 and len(slept) == 10_001
    assert credentials.signer.access_key_id == "k"


# -- virtual-host addressing ------------------------------------------------------------------


class Loopback(AbstractResolver):
    """Every host name is 127.0.0.1: ``bucket.s3.nexus.test`` reaches the local gateway."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


async def test_virtual_host_urls_are_accepted_by_the_server(bucket: S3Bucket) -> None:
    port = urlsplit(bucket.endpoint_url).port
    settings = StorageSettings(
        endpoint_url=f"http://{DOMAIN}:{port}",
        region=bucket.region,
        access_key_id=bucket.access_key_id,
        secret_access_key=bucket.secret_access_key,
        bucket=bucket.bucket,
        addressing_style="virtual",
    )
    store = PayloadStore(None, settings, None)  # type: ignore[arg-type]
    put = store.presign_put("dir/a b.json", 60)
    assert put.startswith(f"http://{bucket.bucket}.{DOMAIN}:{port}/dir/a%20b.json?")
    connector = aiohttp.TCPConnector(resolver=Loopback())
    async with aiohttp.ClientSession(connector=connector) as http:
        assert await status_of(http, "PUT", put, b"by host name") == 200
        get = store.presign_get("dir/a b.json", 60)
        async with http.get(URL(get, encoded=True)) as answer:
            assert (answer.status, await answer.read()) == (200, b"by host name")
        # signatures are checked on this route too: one digit off is refused
        signature = query_of(get)["X-Amz-Signature"]
        off = get.replace(signature, ("1" if signature[0] == "0" else "0") + signature[1:])
        assert await status_of(http, "GET", off) == 403
    assert bucket.get("dir/a b.json") == b"by host name"
