"""Pieces the HTTP fuzz tests share: chunked framing of a body, and the mutations that turn
valid bytes into nearly valid ones (each test's own bytes that matter to its parser)."""

from __future__ import annotations

import random
from collections.abc import Sequence


def chunked(rng: random.Random, body: bytes) -> bytes:
    """``body`` in chunks of random sizes, hex digits in either case, an extension and a
    trailer now and then."""
    out, at = b"", 0
    while at < len(body):
        size = rng.randrange(1, len(body) - at + 1)
        digits = b"%x" % size
        digits = digits.upper() if rng.random() < 0.5 else digits
        extension = b";name=value" if rng.random() < 0.2 else b""
        out += digits + extension + b"\r\n" + body[at : at + size] + b"\r\n"
        at += size
    trailers = b"X-Checksum: abc\r\n" if rng.random() < 0.2 else b""
    return out + b"0\r\n" + trailers + b"\r\n"


def mutate(rng: random.Random, raw: bytes, inserts: Sequence[bytes]) -> bytes:
    """``raw`` with one to three changes: a byte changed, ``inserts`` (or random bytes)
    put in, a range removed or repeated, or the rest cut off."""
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(0, len(data) + 1)
        match rng.randrange(5):
            case 0 if data:  # one byte changed
                data[min(at, len(data) - 1)] = rng.randrange(256)
            case 1:  # bytes inserted
                data[at:at] = rng.choice(inserts) if rng.random() < 0.8 else rng.randbytes(3)
            case 2:  # a range removed
                del data[at : at + rng.randrange(1, 8)]
            case 3:  # a range repeated
                data[at:at] = data[at : at + rng.randrange(1, 30)]
            case _:  # cut short
                del data[at:]
    return bytes(data)
