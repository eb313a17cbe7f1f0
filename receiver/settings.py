"""The receiver's settings: shared sections plus its own ``receiver`` section."""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus.core.config import (
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


def _receiver_http() -> HttpSettings:
    return HttpSettings(port=8081, max_body_size=256 * 1024)


@dataclass(frozen=True)
class ReceiverSettings:
    http: HttpSettings = field(default_factory=_receiver_http)
    log: LogSettings = field(default_factory=LogSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    """Only names the default result location; the receiver never reads objects."""
    signing: SigningSettings = field(default_factory=SigningSettings)
    receiver: ReceiverSection = field(default_factory=ReceiverSection)
