"""Run tokens and signed paths: round trips, forgeries, expiry and key rotation."""

from __future__ import annotations

import hmac
import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from nexus.core.errors import ConfigError
from nexus.core.signing import MIN_KEY_LENGTH, HmacKey, Signer

OLD = "old-key-0123456789abcdef"
NEW = "new-key-fedcba9876543210"
RUN = "5f0c4f3e-8a43-4c8e-9d0b-2f7d7c1e9a11"


def split(signed: str) -> tuple[str, str, str]:
    parts = urlsplit(signed)
    query = dict(parse_qsl(parts.query))
    assert set(query) == {"expires", "signature"}
    return parts.path, query["expires"], query["signature"]


@pytest.mark.parametrize("key_length", [0, 1, 16, 63, 64, 65, 200])
def test_hmac_key_gives_the_standard_hmac(key_length: int) -> None:
    key = bytes((7 + 3 * i) % 256 for i in range(key_length))
    mac = HmacKey(key)
    for message in (b"", b"x", b"run:echo/" + RUN.encode(), bytes(range(256)) * 5):
        assert mac.digest(message) == hmac.digest(key, message, "sha256")
        assert mac.digest(message) == mac.digest(message)  # the padded states are not consumed


def test_keys_are_required_and_long_enough() -> None:
    with pytest.raises(ConfigError, match="NEXUS__SIGNING__KEYS"):
        Signer([])
    with pytest.raises(ConfigError, match=str(MIN_KEY_LENGTH)):
        Signer([OLD, "short"])


def test_run_token_round_trip() -> None:
    signer = Signer([NEW])
    token = signer.run_token("algo", RUN)
    assert signer.check_run_token("algo", RUN, token)
    assert token == Signer([NEW]).run_token("algo", RUN)  # any pod computes the same token
    assert token.isascii()
    assert " " not in token  # fits an environment variable and a header as is


def test_run_token_is_bound_to_its_run_and_key() -> None:
    signer = Signer([NEW])
    token = signer.run_token("algo", RUN)
    assert not signer.check_run_token("algo", "another-run", token)
    assert not signer.check_run_token("other-algo", RUN, token)
    assert not signer.check_run_token("algo", RUN, Signer([OLD]).run_token("algo", RUN))
    forged = ("A" if token[0] != "A" else "B") + token[1:]
    for bad in (forged, token[:-1], token + "A", "", "é" * 32, "\udc80"):
        assert not signer.check_run_token("algo", RUN, bad)


def test_rotation_new_key_signs_every_key_verifies() -> None:
    before = Signer([OLD])
    during = Signer([NEW, OLD])
    after = Signer([NEW])
    issued_before = before.run_token("algo", RUN)
    assert during.check_run_token("algo", RUN, issued_before)  # still valid while rotating
    issued_during = during.run_token("algo", RUN)
    assert issued_during == after.run_token("algo", RUN)  # signed with the new key
    assert after.check_run_token("algo", RUN, issued_during)
    assert not after.check_run_token("algo", RUN, issued_before)  # old key withdrawn
    path = before.sign_path("/p", 60)
    assert during.check_path(*split(path)) is None
    assert after.check_path(*split(path)) == "the link's signature does not match"


def test_signed_path_round_trip_and_expiry() -> None:
    signer = Signer([NEW])
    now = 1_800_000_000.0
    signed = signer.sign_path("/algorithm/v1.2/payload/algo/requests/x", 60, now=now)
    path, expires, signature = split(signed)
    assert path == "/algorithm/v1.2/payload/algo/requests/x"
    assert int(expires) == now + 60
    assert signer.check_path(path, expires, signature, now=now) is None
    assert signer.check_path(path, expires, signature, now=now + 60) is None
    assert signer.check_path(path, expires, signature, now=now + 61) == "the link has expired"
    # with the real clock
    fresh = signer.sign_path("/p", 30)
    assert signer.check_path(*split(fresh)) is None
    stale = signer.sign_path("/p", 30, now=time.time() - 31)
    assert signer.check_path(*split(stale)) == "the link has expired"


def test_tampered_signed_paths_are_refused() -> None:
    signer = Signer([NEW])
    now = 1_800_000_000.0
    path, expires, signature = split(signer.sign_path("/a/run-1", 60, now=now))
    mismatch = "the link's signature does not match"
    assert signer.check_path("/a/run-2", expires, signature, now=now) == mismatch
    assert signer.check_path(path, str(int(expires) + 3600), signature, now=now) == mismatch
    assert signer.check_path(path, expires, signature[::-1], now=now) == mismatch
    assert signer.check_path(path, expires, "", now=now) == mismatch
    assert signer.check_path(path, expires, "ü" + signature[1:], now=now) == mismatch
    # a run token is not a signature for a path, nor the other way round
    assert signer.check_path(path, expires, signer.run_token("a", "run-1"), now=now) == mismatch
    assert not signer.check_run_token("a", "run-1", signature)


@pytest.mark.parametrize(
    "expires",
    ["", "soon", "1.5", " 1800000060", "+1800000060", "1_800_000_060", "١٢٣", "9" * 5000],
)
def test_malformed_expiry_is_refused(expires: str) -> None:
    signer = Signer([NEW])
    _, _, signature = split(signer.sign_path("/p", 60, now=1_800_000_000.0))
    assert signer.check_path("/p", expires, signature, now=0) == "the link is malformed"
