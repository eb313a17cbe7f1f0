"""SigV4: our signer against botocore's, byte for byte, on awkward keys and queries."""

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
