"""SigV4: our signer against botocore's, byte for byte, on awkward keys and queries, with
and without a session token, path- and virtual-host-style."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from unittest import mock

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest

from nexus.core import sigv4

NOW = datetime(2026, 11, 22, 2, 0, 0, tzinfo=UTC)
CREDENTIALS = botocore.credentials.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY")
SIGNER = sigv4.Signer("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY", "eu-west-1")
KEYS = ["plain.txt", "dir/sub dir/a+b=c&d.json", "ünïcödé/~tilde*star'quote", "(x)[y]!@$"]
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCWV1LXdlc3QtMSJHMEUCIQ+abc/def+ghi=="
"""A session token as STS hands them out: base64, so '/', '+' and '=' must be encoded."""
TEMPORARY = botocore.credentials.Credentials("ASIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY", TOKEN)
TEMPORARY_SIGNER = sigv4.Signer(
    "ASIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY", "eu-west-1", session_token=TOKEN
)


@pytest.fixture(autouse=True)
def frozen_botocore_clock() -> Iterator[None]:
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        yield


@pytest.mark.parametrize("key", KEYS)
def test_presigned_urls_match_botocore(key: str) -> None:
    url = sigv4.object_url("http://127.0.0.1:9000", "bucket-a", key)
    for method in ("GET", "PUT"):
        request = botocore.awsrequest.AWSRequest(method=method, url=url)
        botocore.auth.S3SigV4QueryAuth(CREDENTIALS, "s3", "eu-west-1", expires=900).add_auth(
            request
        )
        assert SIGNER.presign(method, url, expires_in=900, now=NOW) == request.url


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("query", ["", "?list-type=2&prefix=a%2Fb", "?uploads", "?acl="])
def test_signed_headers_match_botocore(key: str, query: str) -> None:
    url = sigv4.object_url("http://127.0.0.1:9000", "bucket-a", key) + query
    body = b'{"x": 1}'
    request = botocore.awsrequest.AWSRequest(
        method="PUT", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    botocore.auth.S3SigV4Auth(CREDENTIALS, "s3", "eu-west-1").add_auth(request)
    ours = SIGNER.headers(
        "PUT", url, body=body, headers={"Content-Type": "application/json"}, now=NOW
    )
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]


def test_presign_refuses_validity_s3_would_refuse() -> None:
    for seconds in (0, sigv4.MAX_PRESIGN_SECONDS + 1):
        with pytest.raises(ValueError, match="expires_in"):
            SIGNER.presign("GET", "http://127.0.0.1:9000/b/k", expires_in=seconds)


@pytest.mark.parametrize("key", ["inputs/algorithm=echo/0b409392", "a b/ü+%/x?y", "k"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_presign_object_equals_the_general_presign(key: str, method: str) -> None:
    signer = sigv4.Signer("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "eu-west-1")
    now = datetime(2026, 11, 22, 12, 30, 5, tzinfo=UTC)
    endpoint = "http://127.0.0.1:9000"
    general = signer.presign(
        method, sigv4.object_url(endpoint, "bucket", key), expires_in=900, now=now
    )
    fast = signer.presign_object(method, endpoint, "bucket", key, expires_in=900, now=now)
    assert fast == general


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://s3.example.com:443",  # a default port: not in the signed Host
        "http://127.0.0.1:80/",
        "http://gw.example.com:9000/s3",  # S3 served under a path prefix
        "https://gw.example.com/storage/s3/",
    ],
)
def test_presigned_urls_of_any_endpoint_match_botocore(endpoint: str) -> None:
    url = sigv4.object_url(endpoint, "bucket-a", "dir/a b.json")
    for method in ("GET", "PUT"):
        request = botocore.awsrequest.AWSRequest(method=method, url=url)
        botocore.auth.S3SigV4QueryAuth(CREDENTIALS, "s3", "eu-west-1", expires=900).add_auth(
            request
        )
        assert SIGNER.presign(method, url, expires_in=900, now=NOW) == request.url
        fast = SIGNER.presign_object(
            method, endpoint, "bucket-a", "dir/a b.json", expires_in=900, now=NOW
        )
        assert fast == request.url


def test_uri_encode_is_quote_with_only_unreserved_characters_kept() -> None:
    """Every ASCII character (and some beyond) encodes as urllib's quote() encodes it."""
    from urllib.parse import quote

    texts = ["".join(chr(c) for c in range(128)), *KEYS, "a/b/c", "ü/€ 𝄞", ""]
    for text in texts:
        assert sigv4.uri_encode(text) == quote(text, safe="~")
        assert sigv4.uri_encode(text, keep_slash=True) == quote(text, safe="/~")


def botocore_presigned(credentials: botocore.credentials.Credentials, method: str, url: str) -> str:
    request = botocore.awsrequest.AWSRequest(method=method, url=url)
    botocore.auth.S3SigV4QueryAuth(credentials, "s3", "eu-west-1", expires=900).add_auth(request)
    return str(request.url)


@pytest.mark.parametrize("key", KEYS)
def test_presigned_urls_with_a_session_token_match_botocore(key: str) -> None:
    url = sigv4.object_url("http://127.0.0.1:9000", "bucket-a", key)
    for method in ("GET", "PUT"):
        theirs = botocore_presigned(TEMPORARY, method, url)
        assert "X-Amz-Security-Token=IQoJ" in theirs
        assert TEMPORARY_SIGNER.presign(method, url, expires_in=900, now=NOW) == theirs
        fast = TEMPORARY_SIGNER.presign_object(
            method, "http://127.0.0.1:9000", "bucket-a", key, expires_in=900, now=NOW
        )
        assert fast == theirs


@pytest.mark.parametrize("query", ["", "?list-type=2&prefix=a%2Fb", "?uploads"])
def test_signed_headers_with_a_session_token_match_botocore(query: str) -> None:
    url = sigv4.object_url("https://s3.example.com", "bucket-a", "dir/a b.json") + query
    body = b'{"x": 1}'
    request = botocore.awsrequest.AWSRequest(
        method="PUT", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    botocore.auth.S3SigV4Auth(TEMPORARY, "s3", "eu-west-1").add_auth(request)
    ours = TEMPORARY_SIGNER.headers(
        "PUT", url, body=body, headers={"Content-Type": "application/json"}, now=NOW
    )
    assert "x-amz-security-token" in ours["authorization"]  # signed, not merely sent
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-security-token"] == request.headers["X-Amz-Security-Token"] == TOKEN


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("https://s3.example.com", "https://bucket-a.s3.example.com/dir/a%20b.json"),
        ("https://s3.example.com:443/", "https://bucket-a.s3.example.com:443/dir/a%20b.json"),
        ("http://gw.example.com:9000/s3", "http://bucket-a.gw.example.com:9000/s3/dir/a%20b.json"),
        (
            "https://s3.eu-west-1.amazonaws.com",
            "https://bucket-a.s3.eu-west-1.amazonaws.com/dir/a%20b.json",
        ),
    ],
)
@pytest.mark.parametrize("signer", [SIGNER, TEMPORARY_SIGNER], ids=["keys", "token"])
def test_virtual_host_urls_match_botocore(endpoint: str, url: str, signer: sigv4.Signer) -> None:
    """The bucket moves into the host name (a path prefix of the endpoint stays, default
    ports are not signed), and the URL is signed as botocore signs that URL."""
    assert sigv4.object_url(endpoint, "bucket-a", "dir/a b.json", virtual_host=True) == url
    credentials = TEMPORARY if signer.session_token else CREDENTIALS
    for method in ("GET", "PUT"):
        theirs = botocore_presigned(credentials, method, url)
        fast = signer.presign_object(
            method, endpoint, "bucket-a", "dir/a b.json", expires_in=900, now=NOW, virtual_host=True
        )
        assert fast == theirs
        assert signer.presign(method, url, expires_in=900, now=NOW) == theirs


def test_bucket_and_object_urls_in_both_styles() -> None:
    assert sigv4.object_url("http://h:1") == "http://h:1/"
    assert sigv4.object_url("http://h:1/s3/", "b") == "http://h:1/s3/b"
    assert sigv4.object_url("http://h:1/s3", "b", "k/ü") == "http://h:1/s3/b/k/%C3%BC"
    assert sigv4.object_url("http://h:1", "b", virtual_host=True) == "http://b.h:1/"
    assert sigv4.object_url("http://h:1/s3", "b", "k", virtual_host=True) == "http://b.h:1/s3/k"


@pytest.mark.parametrize(
    ("endpoint", "bucket", "problem"),
    [
        ("https://s3.example.com", "nexus-data", None),
        ("https://s3.example.com", "my.bucket", "DNS label"),
        ("https://s3.example.com", "Upper", "DNS label"),
        ("https://s3.example.com", "under_score", "DNS label"),
        ("https://s3.example.com", "ab", "DNS label"),
        ("http://127.0.0.1:9000", "nexus", "IP address"),
        ("http://[::1]:9000", "nexus", "IP address"),
    ],
)
def test_which_buckets_can_be_addressed_by_host_name(
    endpoint: str, bucket: str, problem: str | None
) -> None:
    found = sigv4.virtual_host_problem(endpoint, bucket)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_the_secret_and_the_token_are_not_in_the_repr() -> None:
    shown = repr(TEMPORARY_SIGNER)
    assert "ASIAEXAMPLE" in shown
    assert TEMPORARY_SIGNER.secret_access_key not in shown and TOKEN not in shown
