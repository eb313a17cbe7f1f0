"""Settings: defaults, file and environment precedence, and one-line errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nexus.core.config import (
    HttpSettings,
    LogSettings,
    PostgresSettings,
    ShardSettings,
    load_settings,
    parse_duration,
    parse_size,
)
from nexus.core.errors import ConfigError
from nexus.scheduler.settings import SchedulerSection


@dataclass(frozen=True)
class Token:
    name: str
    algorithms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Extra:
    tokens: tuple[Token, ...] = ()
    enabled: bool = False
    required_name: str = field(default="")


@dataclass(frozen=True)
class Sample:
    http: HttpSettings = field(default_factory=HttpSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    shards: ShardSettings = field(default_factory=ShardSettings)
    log: LogSettings = field(default_factory=LogSettings)
    extra: Extra = field(default_factory=Extra)


@dataclass(frozen=True)
class Required:
    value: str


@dataclass(frozen=True)
class NeedsValue:
    required: Required


def test_defaults_without_any_source() -> None:
    settings = load_settings(Sample, env={})
    assert settings.http.port == 8080
    assert settings.postgres.batch_max_delay == 0.01
    assert settings.shards.create_rate == {}


def test_environment_values_are_converted() -> None:
    env = {
        "NEXUS__HTTP__PORT": "9000",
        "NEXUS__HTTP__SHUTDOWN_TIMEOUT": "1m",
        "NEXUS__HTTP__MAX_BODY_SIZE": "2MiB",
        "NEXUS__POSTGRES__DSN": "postgresql://x@y/z",
        "NEXUS__SHARDS__CREATE_RATE": '{"shard-a": 100, "shard-b": 2.5}',
        "NEXUS__SHARDS__CONTROLLER_KUBECONFIG": "/tmp/k",
        "NEXUS__LOG__LEVEL": "DEBUG",
        "NEXUS__EXTRA__ENABLED": "yes",
        "NEXUS__EXTRA__TOKENS": '[{"name": "a", "algorithms": ["echo"]}]',
        "NEXUS__OTHER_SERVICE__ANYTHING": "ignored",
        "UNRELATED": "ignored",
    }
    settings = load_settings(Sample, env=env)
    assert settings.http.port == 9000
    assert settings.http.shutdown_timeout == 60.0
    assert settings.http.max_body_size == 2 * 1024**2
    assert settings.postgres.dsn == "postgresql://x@y/z"
    assert settings.shards.create_rate == {"shard-a": 100.0, "shard-b": 2.5}
    assert settings.shards.controller_kubeconfig == Path("/tmp/k")
    assert settings.log.level == "DEBUG"
    assert settings.extra.enabled is True
    assert settings.extra.tokens == (Token("a", ("echo",)),)


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_file_values_and_environment_precedence(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"nexus{suffix}"
    if suffix == ".yaml":
        path.write_text("http:\n  port: 7000\n  drain_delay: 0\npostgres:\n  dsn: from-file\n")
    else:
        path.write_text('[http]\nport = 7000\ndrain_delay = 0\n[postgres]\ndsn = "from-file"\n')
    env = {"NEXUS__CONFIG_FILE": str(path), "NEXUS__HTTP__PORT": "7001"}
    settings = load_settings(Sample, env=env)
    assert settings.http.port == 7001  # the environment wins over the file
    assert settings.http.drain_delay == 0.0
    assert settings.postgres.dsn == "from-file"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"NEXUS__HTTP__PORT": "eighty"},
            "NEXUS__HTTP__PORT: expected an integer, got 'eighty'",
        ),
        (
            {"NEXUS__HTTP__PORT": "70000"},
            "NEXUS__HTTP__PORT: expected a port number, got 70000",
        ),
        (
            {"NEXUS__HTTP__SHUTDOWN_TIMEOUT": "soon"},
            "NEXUS__HTTP__SHUTDOWN_TIMEOUT: expected a duration such as 30s, 5m or 24h",
        ),
        (
            {"NEXUS__HTTP__SHUTDOWN_TIMEOUT": "0s"},
            "NEXUS__HTTP__SHUTDOWN_TIMEOUT: expected a value > 0, got 0.0",
        ),
        ({"NEXUS__LOG__LEVEL": "LOUD"}, "NEXUS__LOG__LEVEL: expected one of DEBUG, INFO"),
        ({"NEXUS__EXTRA__ENABLED": "maybe"}, "NEXUS__EXTRA__ENABLED: expected true or false"),
        (
            {"NEXUS__SHARDS__CREATE_RATE": "[1, 2]"},
            "NEXUS__SHARDS__CREATE_RATE: expected a mapping",
        ),
        ({"NEXUS__SHARDS__CREATE_RATE": '{"a": "x"}'}, "NEXUS__SHARDS__CREATE_RATE.a: expected a"),
        ({"NEXUS__SHARDS__CREATE_RATE": "{oops"}, "NEXUS__SHARDS__CREATE_RATE: expected a JSON"),
        (
            {"NEXUS__EXTRA__TOKENS": '[{"nam": "a"}]'},
            "NEXUS__EXTRA__TOKENS[0].nam: unknown setting (this section has: algorithms, name)",
        ),
        (
            {"NEXUS__POSTGRES__DNS": "x"},
            "NEXUS__POSTGRES__DNS: unknown setting (this section has: acquire_timeout, batch_max_delay",
        ),
        ({"NEXUS__CONFIG_FILE": "/nonexistent/nexus.yaml"}, "NEXUS__CONFIG_FILE: cannot read"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(Sample, env=env)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_bad_file_value_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "nexus.yaml"
    path.write_text("http:\n  port: [1]\n")
    with pytest.raises(ConfigError, match=r"^http\.port in .*nexus\.yaml: expected an integer"):
        load_settings(Sample, env={}, config_file=path)
    path.write_text("http: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"^http in .*: expected a mapping"):
        load_settings(Sample, env={}, config_file=path)
    path.write_text("http: {port: 1\n")
    with pytest.raises(ConfigError, match=r"^NEXUS__CONFIG_FILE: .* is not valid"):
        load_settings(Sample, env={}, config_file=path)


def test_missing_required_setting_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^NEXUS__REQUIRED__VALUE: required setting is missing"):
        load_settings(NeedsValue, env={})
    assert load_settings(NeedsValue, env={"NEXUS__REQUIRED__VALUE": "v"}).required.value == "v"


def test_settings_are_frozen() -> None:
    settings = load_settings(Sample, env={})
    with pytest.raises(AttributeError):
        settings.http.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), ("24h", 86400), ("2", 2)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("1MiB", 1048576), ("1kB", 1000), ("7", 7)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_process_exits_with_one_line_naming_the_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nexus", "migrate"],
        env={"NEXUS__POSTGRES__POOL_MAX_SIZE": "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nexus migrate: configuration error: NEXUS__POSTGRES__POOL_MAX_SIZE: "
        "expected an integer, got 'lots'"
    ]


@dataclass(frozen=True)
class WithScheduler:
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)


def test_a_job_input_limit_no_process_could_start_with_is_refused() -> None:
    """Linux refuses an environment string over 128 KiB: an input carried in NEXUS__INPUT
    beyond that would keep its container from starting."""
    env = {"NEXUS__SCHEDULER__JOB_INPUT_LIMIT": "64KiB"}
    assert load_settings(WithScheduler, env=env).scheduler.job_input_limit == 64 * 1024
    with pytest.raises(ConfigError, match="JOB_INPUT_LIMIT: expected a size from 0 to 64 KiB"):
        load_settings(WithScheduler, env={"NEXUS__SCHEDULER__JOB_INPUT_LIMIT": "1MiB"})
