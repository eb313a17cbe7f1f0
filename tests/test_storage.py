"""Object storage on a real S3 server (SeaweedFS): objects, buckets, presigned URLs."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
import botocore.session
import pytest
import pytest_asyncio
import trustme
from aiohttp import web
from botocore.config import Config
from botocore.utils import parse_timestamp
from harness import S3Bucket
from yarl import URL

from nexus.core import sigv4
from nexus.core.config import StorageSettings
from nexus.core.errors import ConfigError, StorageUnavailable
from nexus.core.storage import MAX_PRESIGN_SECONDS, ObjectNames, PayloadStore, _timestamp
from nexus.core.storagecredentials import StorageCredentials

NOW = datetime(2026, 11, 22, 2, 0, 0, tzinfo=UTC)


def settings_for(s3: S3Bucket, **changes: object) -> StorageSettings:
    base = StorageSettings(
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        bucket=s3.bucket,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def store(s3: S3Bucket) -> AsyncIterator[PayloadStore]:
    opened = await PayloadStore.open(settings_for(s3))
    try:
        yield opened
    finally:
        await opened.close()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def test_object_names_and_references() -> None:
    names = ObjectNames(StorageSettings(bucket="data", prefix="nexus/"))
    assert names.input_key("algo", "123") == "nexus/inputs/algorithm=algo/123"
    assert names.result_key("algo", "123") == "nexus/results/algorithm=algo/123"
    uri = names.uri(names.input_key("algo", "123"))
    assert uri == "s3://data/nexus/inputs/algorithm=algo/123"
    assert names.key_of(uri) == "nexus/inputs/algorithm=algo/123"
    assert names.key_of("s3://other/nexus/inputs/x") is None
    assert names.key_of("https://example.com/data/x") is None
    # a result may name the run's own result object, and no other of this bucket
    own = names.uri(names.result_key("algo", "123"))
    assert names.result_key_of(own, "algo", "123") == "nexus/results/algorithm=algo/123"
    for elsewhere in (uri, names.uri(names.result_key("algo", "124")), "https://h/x"):
        assert names.result_key_of(elsewhere, "algo", "123") is None, elsewhere
    assert names.result_key_of(own, "other", "123") is None


async def test_put_get_delete_roundtrip(store: PayloadStore, s3: S3Bucket) -> None:
    key = store.input_key("algo", "run-1")
    body = b'{"x": [1, 2, 3], "text": "\xc3\xa9"}'
    await store.put(key, body)
    assert await store.get(key) == body
    assert s3.get(key) == body  # really in the bucket
    await store.put(key, b"{}")  # overwrite
    assert await store.get(key) == b"{}"
    await store.delete([key, "absent/key"])
    assert await store.get(key) is None
    await store.delete([])


async def test_get_of_a_missing_key_is_none(store: PayloadStore) -> None:
    assert await store.get("no/such/key") is None


async def test_delete_many_in_chunks(store: PayloadStore, s3: S3Bucket) -> None:
    keys = [f"many/{i:04d}" for i in range(1003)]
    semaphore = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with semaphore:
            await store.put(key, b"1")

    await asyncio.gather(*(put(k) for k in keys))
    await store.delete(keys)
    remaining = s3.keys()
    assert [k for k in remaining if k.startswith("many/")] == []


async def test_ensure_bucket_creates_once_and_is_idempotent(s3: S3Bucket) -> None:
    fresh = S3Bucket(s3.info, f"{s3.bucket[:50]}-fresh")
    store = await PayloadStore.open(settings_for(s3, bucket=fresh.bucket))
    try:
        await store.ensure_bucket()
        await store.ensure_bucket()
        await store.put("k", b"v")
        assert fresh.get("k") == b"v"
    finally:
        await store.close()
        fresh.delete()


async def test_ensure_bucket_of_an_existing_bucket_keeps_it(
    store: PayloadStore, s3: S3Bucket
) -> None:
    s3.put("kept", b"yes")
    await store.ensure_bucket()
    assert await store.get("kept") == b"yes"


async def test_presigned_get_and_put_work_with_plain_http(
    store: PayloadStore, http: aiohttp.ClientSession
) -> None:
    key = store.result_key("algo", "run-2")
    async with http.put(store.presign_put(key, 60), data=b"result bytes") as answer:
        assert answer.status == 200, await answer.text()
    assert await store.get(key) == b"result bytes"
    async with http.get(store.presign_get(key, 60)) as answer:
        assert answer.status == 200
        assert await answer.read() == b"result bytes"


@pytest.mark.parametrize("key", ["dir/sub dir/a+b=c&d.json", "ünïcödé/~tilde*star'quote"])
async def test_presigned_urls_of_awkward_keys(
    store: PayloadStore, http: aiohttp.ClientSession, key: str
) -> None:
    async with http.put(URL(store.presign_put(key, 60), encoded=True), data=b"x") as a:
        assert a.status == 200, await a.text()
    async with http.get(URL(store.presign_get(key, 60), encoded=True)) as a:
        assert a.status == 200
        assert await a.read() == b"x"


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    encoded = "&".join(f"{k}={v}" for k, v in query.items())
    return urlunsplit(parts._replace(query=encoded))


async def test_tampered_presigned_urls_are_refused(
    store: PayloadStore, http: aiohttp.ClientSession
) -> None:
    await store.put("secret/a", b"a")
    await store.put("secret/b", b"b")
    url = store.presign_get("secret/a", 60)
    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    tampered = [
        url.replace("secret/a", "secret/b"),  # another object
        _with_query(url, **{"X-Amz-Expires": "604800"}),  # a longer validity
        _with_query(
            url, **{"X-Amz-Signature": ("0" if signature[0] != "0" else "1") + signature[1:]}
        ),
    ]
    for bad in tampered:
        async with http.get(URL(bad, encoded=True)) as answer:
            assert answer.status == 403, bad
    put = store.presign_put("secret/a", 60)
    async with http.put(put.replace("secret/a", "secret/c"), data=b"evil") as answer:
        assert answer.status == 403
    async with http.get(url) as answer:  # the untouched URL still works
        assert answer.status == 200


async def test_expired_presigned_urls_are_refused(
    store: PayloadStore, http: aiohttp.ClientSession
) -> None:
    await store.put("old", b"o")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    async with http.get(store.presign_get("old", 60, now=an_hour_ago)) as answer:
        assert answer.status == 403
    async with http.put(store.presign_put("old", 60, now=an_hour_ago), data=b"new") as answer:
        assert answer.status == 403
    assert await store.get("old") == b"o"
    fresh = store.presign_get("old", 60, now=datetime.now(UTC) - timedelta(seconds=30))
    async with http.get(fresh) as answer:  # signed in the past, still within its validity
        assert answer.status == 200


def test_validity_is_clamped_to_what_s3_accepts(store: PayloadStore) -> None:
    def expires(url: str) -> str:
        return dict(parse_qsl(urlsplit(url).query))["X-Amz-Expires"]

    assert expires(store.presign_get("k", 0)) == "1"
    assert expires(store.presign_get("k", 90.7)) == "90"
    assert expires(store.presign_put("k", 10**9)) == str(MAX_PRESIGN_SECONDS)


@pytest.fixture
def frozen_botocore_clock() -> Iterator[None]:
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        yield


@pytest.mark.usefixtures("frozen_botocore_clock")
@pytest.mark.parametrize("key", ["inputs/algorithm=algo/0f6e", "dir/sub dir/a+b=c&d.json", "ü/~*'"])
def test_presigned_urls_equal_botocores(s3: S3Bucket, key: str) -> None:
    session = botocore.session.get_session()
    client = session.create_client(
        "s3",
        region_name=s3.region,
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    names = PayloadStore.__new__(PayloadStore)  # presigning needs no connection
    PayloadStore.__init__(names, None, settings_for(s3), None)  # type: ignore[arg-type]
    try:
        for method, operation in (("GET", "get_object"), ("PUT", "put_object")):
            theirs = client.generate_presigned_url(
                operation, Params={"Bucket": s3.bucket, "Key": key}, ExpiresIn=900
            )
            ours = (names.presign_get if method == "GET" else names.presign_put)(key, 900, now=NOW)
            assert ours == theirs
    finally:
        client.close()


TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCWV1LXdlc3QtMSJHMEUCIQ+abc/def+ghi=="
ENDPOINTS = [
    None,  # AWS itself
    "http://127.0.0.1:9000",
    "https://s3.example.com:443",  # a default port: not in the signed Host
    "http://gw.example.com:9000/s3",  # S3 served under a path prefix
    "https://gw.example.com/storage/s3/",
]


@pytest.mark.usefixtures("frozen_botocore_clock")
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("style", ["path", "virtual", "auto"])
@pytest.mark.parametrize("token", ["", TOKEN], ids=["keys", "session-token"])
def test_presigned_urls_equal_botocores_presigner(
    endpoint: str | None, style: str, token: str
) -> None:
    """botocore's own client, set up as the store's aiobotocore client is, presigns the
    same URLs, byte for byte: with a session token, in every addressing style, at every
    kind of endpoint. Two deliberate differences: ``virtual`` is refused at an IP address
    (botocore quietly falls back to path-style), and ``auto`` on AWS uses the regional
    endpoint where botocore's presigner still uses the legacy global one."""
    settings = StorageSettings(
        endpoint_url=endpoint,
        region="eu-west-1",
        access_key_id="ASIAEXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCY",
        bucket="bucket-a",
        addressing_style=style,  # type: ignore[arg-type]
    )
    signer = sigv4.Signer(
        settings.access_key_id, settings.secret_access_key, "eu-west-1", session_token=token
    )
    if style == "virtual" and endpoint and "127.0.0.1" in endpoint:
        with pytest.raises(ConfigError, match="IP address"):
            PayloadStore(None, settings, None)  # type: ignore[arg-type]
        return
    store = PayloadStore(None, settings, None, None, StorageCredentials(signer))  # type: ignore[arg-type]
    client = botocore.session.get_session().create_client(
        "s3",
        region_name="eu-west-1",
        endpoint_url=endpoint,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=token or None,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "virtual" if style == "auto" and not endpoint else style},
        ),
    )
    try:
        for key in ("inputs/algorithm=algo/0f6e", "dir/sub dir/a+b=c&d.json", "ü/~*'"):
            for method, operation in (("GET", "get_object"), ("PUT", "put_object")):
                theirs = client.generate_presigned_url(
                    operation, Params={"Bucket": "bucket-a", "Key": key}, ExpiresIn=900
                )
                presign = store.presign_get if method == "GET" else store.presign_put
                assert presign(key, 900, now=NOW) == theirs
                assert ("X-Amz-Security-Token" in theirs) == bool(token)
    finally:
        client.close()


def test_presigned_urls_use_the_public_endpoint(s3: S3Bucket) -> None:
    settings = settings_for(s3, presign_endpoint_url="https://objects.example.com/")
    names = PayloadStore(None, settings, None)  # type: ignore[arg-type]
    url = names.presign_get("a/b", 60)
    assert url.startswith(f"https://objects.example.com/{s3.bucket}/a/b?X-Amz-Algorithm=")
    assert names.presign_get("a/b", 60, for_client=True).startswith("https://objects.example.com/")


def test_clients_can_be_handed_urls_of_their_own_address(s3: S3Bucket) -> None:
    settings = settings_for(
        s3,
        presign_endpoint_url="http://objects.internal:8333",
        client_presign_endpoint_url="https://objects.example.com",
    )
    names = PayloadStore(None, settings, None)  # type: ignore[arg-type]
    assert names.presign_get("a/b", 60).startswith("http://objects.internal:8333/")
    assert names.presign_put("a/b", 60).startswith("http://objects.internal:8333/")
    assert names.presign_get("a/b", 60, for_client=True).startswith("https://objects.example.com/")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_storage_down_is_storage_unavailable(s3: S3Bucket) -> None:
    settings = settings_for(s3, endpoint_url=f"http://127.0.0.1:{_closed_port()}")
    store = await PayloadStore.open(settings)
    try:
        calls = (store.put("k", b"v"), store.get("k"), store.delete(["k"]), store.ensure_bucket())
        # concurrently: each is retried a few times with backoff before it gives up
        outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
        assert all(isinstance(o, StorageUnavailable) for o in outcomes), outcomes
    finally:
        await store.close()


async def test_wrong_credentials_are_storage_unavailable(s3: S3Bucket) -> None:
    store = await PayloadStore.open(settings_for(s3, secret_access_key="not-the-secret"))
    try:
        with pytest.raises(StorageUnavailable):
            await store.put("k", b"v")
        with pytest.raises(StorageUnavailable):
            await store.get("k")
        with pytest.raises(StorageUnavailable):
            await store.ensure_bucket()
    finally:
        await store.close()


async def test_uploads_keep_their_content_type(s3: S3Bucket) -> None:
    # a presigned PUT over kept-alive connections, whatever the credentials and addressing
    store = await PayloadStore.open(settings_for(s3))
    try:
        await store.put("typed", b"<x/>", content_type="application/xml")
        assert await store.get("typed") == b"<x/>"
        answer = sigv4.request(s3.info.signer(), "HEAD", s3.url("typed"))
        headers = {name.lower(): value for name, value in answer.headers.items()}
        assert (answer.status, headers.get("content-type")) == (200, "application/xml")
    finally:
        await store.close()


async def test_an_upload_the_store_refuses_names_the_stores_error(s3: S3Bucket) -> None:
    store = await PayloadStore.open(settings_for(s3, bucket="no-such-bucket"))
    try:
        with pytest.raises(StorageUnavailable, match="404 NoSuchBucket"):
            await store.put("k", b"v")
    finally:
        await store.close()


async def test_uploads_trust_the_certificates_botocore_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage behind a private certificate authority, named by AWS_CA_BUNDLE (as botocore
    reads it for every other call): uploads, over their own client, trust it too."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    stored: list[bytes] = []

    async def put(request: web.Request) -> web.Response:
        stored.append(await request.read())
        return web.Response()

    app = web.Application()
    app.router.add_put("/{tail:.*}", put)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context).start()
    port = runner.addresses[0][1]
    settings = StorageSettings(
        endpoint_url=f"https://127.0.0.1:{port}", access_key_id="k", secret_access_key="s"
    )
    try:
        store = await PayloadStore.open(settings)  # trusting only the usual authorities
        try:
            with pytest.raises(StorageUnavailable, match="certificate"):
                await store.put("inputs/a", b"{}")
        finally:
            await store.close()
        monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
        store = await PayloadStore.open(settings)
        try:
            await store.put("inputs/a", b"{}")
        finally:
            await store.close()
        assert stored == [b"{}"]
    finally:
        await runner.cleanup()


def test_answer_timestamps_are_read_as_botocore_reads_them() -> None:
    for text in (
        "2026-12-06T23:35:00.000Z",  # a listing's LastModified
        "2026-12-06T23:35:00Z",
        "2026-12-06T23:35:00.123456+02:00",
        "Sun, 06 Dec 2026 23:35:00 GMT",  # a Last-Modified header
        "2026-12-06T23:35:00",  # no zone: as botocore decides
    ):
        assert _timestamp(text) == parse_timestamp(text), text
    assert _timestamp("2026-12-06T23:35:00.000Z") == datetime(2026, 12, 6, 23, 35, tzinfo=UTC)
