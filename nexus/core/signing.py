"""HMAC tokens and signed URLs that any pod can check without a database read.

* A **run token** proves that a completion comes from the run it names: the receiver
  recomputes ``HMAC(key, "run:<algorithm>/<id>")`` and compares in constant time. It is
  handed to the algorithm container in ``NEXUS__RUN_TOKEN`` and never stored.
* A **run credential** lets a running algorithm start child runs as its run's caller: the
  scheduler checks ``nexus-run.<algorithm>.<id>.<expires>.<caller>.<mac>`` (the caller in
  unpadded URL-safe base64) against ``HMAC(key, "run-credential:<algorithm>/<id>/<expires>/
  <caller>")``, again without a database read; it is handed out in
  ``NEXUS__RUN_CREDENTIAL`` and expires with the run's deadline.
* A **signed URL** lets a container fetch an input kept inline with its checkpoint from the
  scheduler until an expiry time, without a bearer token: the query carries ``expires`` and
  ``signature = HMAC(key, "<path>\\n<expires>")``; altering either makes it invalid.

Keys rotate: the first key signs, every listed key verifies, so a new key can be rolled out
before the old one is withdrawn.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time
from collections.abc import Sequence

from nexus.core.errors import ConfigError

MIN_KEY_LENGTH = 16
RUN_CREDENTIAL_PREFIX = "nexus-run."

_BLOCK = 64  # SHA-256's block size in bytes
_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))
_URL_SAFE = bytes.maketrans(b"+/", b"-_")


class HmacKey:
    """HMAC-SHA256 (RFC 2104) under one key, whose two padded blocks are hashed once.

    The MACs are those of ``hmac.digest(key, message, "sha256")``, but that call has
    OpenSSL 3 look the algorithm up and set up a context every time: 24,200 instructions
    a MAC against 11,900 here (callgrind, a 45-byte message), and every run needs several
    (its token, its input link, its result URLs, each checked or made again per read)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_INNER_PAD))
        self._outer = hashlib.sha256(key.translate(_OUTER_PAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


@functools.lru_cache(maxsize=1024)
def _caller_name(caller: str) -> str:
    """``caller`` as a run credential carries it: unpadded URL-safe base64 (made once per
    caller, not once per run)."""
    return base64.urlsafe_b64encode(caller.encode()).decode().rstrip("=")


def _encoded_mac(key: HmacKey, data: bytes) -> bytes:
    """The MAC of ``data`` as signatures spell it: the first 24 bytes of the HMAC in
    URL-safe base64 (32 characters, no padding), base64.urlsafe_b64encode's own steps
    without its two Python calls."""
    return binascii.b2a_base64(key.digest(data)[:24], newline=False).translate(_URL_SAFE)


class Signer:
    """Signs and verifies run tokens and URLs with a list of secret keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError("NEXUS__SIGNING__KEYS: at least one signing key is required")
        for key in keys:
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigError(
                    "NEXUS__SIGNING__KEYS: every key must have at least"
                    f" {MIN_KEY_LENGTH} characters"
                )
        self._keys = [HmacKey(key.encode()) for key in keys]

    def _mac(self, key: HmacKey, message: str) -> str:
        # _encoded_mac's steps, one Python call fewer: each Job carries three MACs
        mac = key.digest(message.encode())[:24]
        return binascii.b2a_base64(mac, newline=False).translate(_URL_SAFE).decode()

    def _verify(self, message: str, signature: str) -> bool:
        # bytes, not str: compare_digest refuses str with non-ASCII characters (TypeError)
        given = signature.encode(errors="replace")
        data = message.encode()
        for key in self._keys:  # noqa: SIM110  # no generator for any(): checked per request
            if hmac.compare_digest(_encoded_mac(key, data), given):
                return True
        return False

    # -- run tokens ------------------------------------------------------------------------

    def run_token(self, algorithm: str, run_id: str) -> str:
        """The token that run ``algorithm/run_id`` presents with its completion."""
        return self._mac(self._keys[0], f"run:{algorithm}/{run_id}")

    def check_run_token(self, algorithm: str, run_id: str, token: str) -> bool:
        return self._verify(f"run:{algorithm}/{run_id}", token)

    # -- run credentials -------------------------------------------------------------------

    def run_credential(self, algorithm: str, run_id: str, caller: str, expires: int) -> str:
        """The bearer credential with which run ``algorithm/run_id`` starts children as
        ``caller`` until ``expires`` (a Unix time)."""
        name = _caller_name(caller)
        mac = self._mac(self._keys[0], f"run-credential:{algorithm}/{run_id}/{expires}/{caller}")
        return f"{RUN_CREDENTIAL_PREFIX}{algorithm}.{run_id}.{expires}.{name}.{mac}"

    def check_run_credential(
        self, credential: str, now: float | None = None
    ) -> tuple[str, str, str] | None:
        """(algorithm, run id, caller) of a valid, unexpired run credential, else ``None``."""
        parts = credential.removeprefix(RUN_CREDENTIAL_PREFIX).split(".")
        if not credential.startswith(RUN_CREDENTIAL_PREFIX) or len(parts) != 5:
            return None
        algorithm, run_id, expires, name, mac = parts
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
            return None
        try:
            caller = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if not self._verify(f"run-credential:{algorithm}/{run_id}/{expires}/{caller}", mac):
            return None
        if (time.time() if now is None else now) > int(expires):
            return None
        return algorithm, run_id, caller

    # -- sealed values ---------------------------------------------------------------------

    def seal(self, context: str, value: str) -> str:
        """``value`` with a MAC binding it to ``context``: ``<value>.<mac>`` (URL-safe when
        ``value`` is), for tokens a client hands back, such as a listing's cursor."""
        mac = self._mac(self._keys[0], context + "\n" + value)
        return f"{value}.{mac}"

    def unseal(self, context: str, sealed: str) -> str | None:
        """The value :meth:`seal` sealed for this ``context``, or ``None`` if ``sealed`` was
        made for another context, altered, or not made here at all."""
        value, dot, signature = sealed.rpartition(".")
        if not dot or not self._verify(context + "\n" + value, signature):
            return None
        return value

    # -- signed URLs -----------------------------------------------------------------------

    def sign_path(self, path: str, valid_for: float, now: float | None = None) -> str:
        """``path`` with a query that makes it valid for ``valid_for`` seconds."""
        expires = int((time.time() if now is None else now) + valid_for)
        signature = self._mac(self._keys[0], f"{path}\n{expires}")
        return f"{path}?expires={expires}&signature={signature}"  # both URL-safe as they are

    def check_path(
        self, path: str, expires: str, signature: str, now: float | None = None
    ) -> str | None:
        """``None`` when the signed path is valid now, else why it is not."""
        # int() would take " 1_0" and "+1", and refuses over 4,300 digits with an error
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
            return "the link is malformed"
        deadline = int(expires)
        if not self._verify(f"{path}\n{deadline}", signature):
            return "the link's signature does not match"
        if (time.time() if now is None else now) > deadline:
            return "the link has expired"
        return None
