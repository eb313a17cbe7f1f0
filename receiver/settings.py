"""The receiver's settings: shared sections plus its own ``receiver`` section."""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus.core.config import (
    Bytes,
    HttpSettings,
    LogSettings,
    PostgresSettings,
    SigningSettings,
    StorageSettings,
    positive,
)


@dataclass(frozen=True)
class ReceiverSection:
    allow_tokenless_completions: bool = False
    """Admit completions without a run token, from containers built before tokens existed.
    Anyone who can reach the receiver can then complete any run: keep it off."""
    max_message_length: int = field(default=16_384, metadata=positive())
    """Failure messages longer than this are cut (a stack trace is welcome, a log is not)."""
    max_inline_result: Bytes = field(default=256 * 1024, metadata=positive())
    """Largest result document a completion may carry itself (``"result"``, DESIGN §3),
    as compact JSON; a larger one is refused (413) and goes to the presigned PUT. 256 KiB
    keeps a checkpoint row small enough to read in one go, while most results (scores,
    small tables, ids) fit: each of them then costs no S3 PUT. The receiver's
    ``http.max_body_size`` must leave room for it."""


def _receiver_http() -> HttpSettings:
    # an inline result of max_inline_result, escaped at worst, and the completion around it
    return HttpSettings(port=8081, max_body_size=1024 * 1024)


@dataclass(frozen=True)
class ReceiverSettings:
    http: HttpSettings = field(default_factory=_receiver_http)
    log: LogSettings = field(default_factory=LogSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    """Only names the default result location; the receiver never reads objects."""
    signing: SigningSettings = field(default_factory=SigningSettings)
    receiver: ReceiverSection = field(default_factory=ReceiverSection)
