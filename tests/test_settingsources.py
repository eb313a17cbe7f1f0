"""Settings from files, as Kubernetes mounts Secrets: ``_FILE`` variables, a secrets
directory, their precedence, their errors, and secret values kept out of every message."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nexus.core.config import (
    HttpSettings,
    PostgresSettings,
    SigningSettings,
    StorageSettings,
    load_settings,
    positive,
    secret,
)
from nexus.core.errors import ConfigError
from nexus.scheduler.settings import SchedulerSettings

SECRET = "s3cr3t-Value+/="


@dataclass(frozen=True)
class Guarded:
    """A section with secrets of every shape a conversion can refuse."""

    pin: int = field(default=1, repr=False, metadata=secret(**positive()))
    keys: tuple[int, ...] = field(default=(), repr=False, metadata=secret())
    plain: int = 0


@dataclass(frozen=True)
class Sample:
    http: HttpSettings = field(default_factory=HttpSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    signing: SigningSettings = field(default_factory=SigningSettings)
    guarded: Guarded = field(default_factory=Guarded)


def written(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- _FILE variables ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (f"{SECRET}\n", SECRET),  # as `echo` and editors leave it
        (f"{SECRET}\r\n", SECRET),
        (SECRET, SECRET),  # as `kubectl create secret --from-literal` leaves it
        (f"{SECRET}\n\n", f"{SECRET}\n"),  # one newline only: the rest is the value's
        (f"  {SECRET} ", f"  {SECRET} "),  # spaces are the value's
    ],
)
def test_a_file_variable_gives_the_files_content(tmp_path: Path, content: str, value: str) -> None:
    path = tmp_path / "secret-access-key"
    path.write_bytes(content.encode())
    env = {"NEXUS__STORAGE__SECRET_ACCESS_KEY_FILE": str(path)}
    assert load_settings(Sample, env=env).storage.secret_access_key == value


def test_any_setting_may_come_from_a_file_and_is_converted(tmp_path: Path) -> None:
    env = {
        "NEXUS__HTTP__PORT_FILE": written(tmp_path / "port", "9000\n"),
        "NEXUS__HTTP__SHUTDOWN_TIMEOUT_FILE": written(tmp_path / "timeout", "1m\n"),
        "NEXUS__SIGNING__KEYS_FILE": written(tmp_path / "keys", '["new-key", "old-key"]\n'),
        "NEXUS__POSTGRES__DSN": "postgresql://nexus:pw@db/nexus",
    }
    settings = load_settings(Sample, env=env)
    assert (settings.http.port, settings.http.shutdown_timeout) == (9000, 60.0)
    assert settings.signing.keys == ("new-key", "old-key")
    assert settings.postgres.dsn == "postgresql://nexus:pw@db/nexus"


def test_the_settings_file_may_name_files_too(tmp_path: Path) -> None:
    dsn = written(tmp_path / "dsn", "postgresql://nexus:pw@db/nexus\n")
    config = written(tmp_path / "nexus.yaml", f"postgres:\n  dsn_file: {dsn}\n")
    assert load_settings(Sample, env={}, config_file=config).postgres.dsn.endswith(":pw@db/nexus")
    both = written(tmp_path / "both.yaml", f"postgres:\n  dsn: x\n  dsn_file: {dsn}\n")
    with pytest.raises(ConfigError, match=r"^postgres\.dsn_file in .*both\.yaml: postgres\.dsn"):
        load_settings(Sample, env={}, config_file=both)


def test_a_value_and_its_file_together_are_an_error(tmp_path: Path) -> None:
    env = {
        "NEXUS__STORAGE__SECRET_ACCESS_KEY": SECRET,
        "NEXUS__STORAGE__SECRET_ACCESS_KEY_FILE": written(tmp_path / "s", SECRET),
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(Sample, env=env)
    assert str(caught.value) == (
        "NEXUS__STORAGE__SECRET_ACCESS_KEY_FILE: NEXUS__STORAGE__SECRET_ACCESS_KEY is set too "
        "in the environment; give a value or a file"
    )


@pytest.mark.parametrize("problem", ["missing", "a folder", "empty path", "not UTF-8", "huge"])
def test_an_unusable_file_names_the_setting_and_the_path(tmp_path: Path, problem: str) -> None:
    path = {
        "missing": tmp_path / "absent",
        "a folder": tmp_path,
        "empty path": "",
        "not UTF-8": tmp_path / "binary",
        "huge": tmp_path / "huge",
    }[problem]
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + SECRET.encode())
    (tmp_path / "huge").write_bytes(SECRET.encode() * 100_000)
    env = {"NEXUS__STORAGE__SECRET_ACCESS_KEY_FILE": str(path)}
    with pytest.raises(ConfigError) as caught:
        load_settings(Sample, env=env)
    message = str(caught.value)
    assert message.startswith("NEXUS__STORAGE__SECRET_ACCESS_KEY_FILE: "), message
    assert str(path) in message and "\n" not in message
    assert SECRET not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_names_the_setting_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "locked"
    path.write_text(SECRET)
    path.chmod(0)
    with pytest.raises(ConfigError, match=rf"^NEXUS__POSTGRES__DSN_FILE: cannot read {path}: "):
        load_settings(Sample, env={"NEXUS__POSTGRES__DSN_FILE": str(path)})


# -- a secrets directory --------------------------------------------------------------------


def kubernetes_secret_volume(directory: Path, files: dict[str, str]) -> Path:
    """A folder laid out as the kubelet mounts a Secret: the files in a timestamped
    folder, ``..data`` linking to it, and one link per key into ``..data``."""
    directory.mkdir()
    stamped = directory / "..2026_11_22_02_00_00.000000001"
    stamped.mkdir()
    for name, content in files.items():
        (stamped / name).write_text(content)
    (directory / "..data").symlink_to(stamped.name)
    for name in files:
        (directory / name).symlink_to(f"..data/{name}")
    return directory


def test_a_secrets_directory_as_kubernetes_mounts_it(tmp_path: Path) -> None:
    folder = kubernetes_secret_volume(
        tmp_path / "secrets",
        {
            "POSTGRES__DSN": "postgresql://nexus:pw@db/nexus\n",
            "NEXUS__STORAGE__SECRET_ACCESS_KEY": f"{SECRET}\n",  # as the keys of an envFrom
            "storage__access_key_id": "AKIDEXAMPLE",  # case does not matter
            "AUTH__JWT_HS256_SECRET": "a section this service does not have: skipped",
            "ca.crt": "not a setting: skipped",
        },
    )
    settings = load_settings(Sample, env={"NEXUS__SECRETS_DIR": str(folder)})
    assert settings.postgres.dsn == "postgresql://nexus:pw@db/nexus"
    assert settings.storage.secret_access_key == SECRET
    assert settings.storage.access_key_id == "AKIDEXAMPLE"


def test_precedence_file_then_directory_then_environment(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "HTTP__PORT").write_text("7002")
    (folder / "HTTP__BACKLOG").write_text("99")
    config = written(
        tmp_path / "nexus.yaml", "http:\n  port: 7001\n  drain_delay: 0\n  backlog: 5\n"
    )
    env = {
        "NEXUS__CONFIG_FILE": config,
        "NEXUS__SECRETS_DIR": str(folder),
        "NEXUS__HTTP__PORT_FILE": written(tmp_path / "port", "7003"),
    }
    settings = load_settings(Sample, env=env)
    assert (settings.http.port, settings.http.backlog, settings.http.drain_delay) == (7003, 99, 0)
    del env["NEXUS__HTTP__PORT_FILE"]
    assert load_settings(Sample, env=env).http.port == 7002


def test_a_typo_in_the_secrets_directory_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "POSTGRES__DNS").write_text(SECRET)
    with pytest.raises(ConfigError) as caught:
        load_settings(Sample, env={"NEXUS__SECRETS_DIR": str(folder)})
    message = str(caught.value)
    assert message.startswith(f"NEXUS__SECRETS_DIR file {folder / 'POSTGRES__DNS'}: unknown")
    assert SECRET not in message


def test_a_missing_secrets_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^NEXUS__SECRETS_DIR: cannot read the folder .*absent"):
        load_settings(Sample, env={"NEXUS__SECRETS_DIR": str(tmp_path / "absent")})


# -- secrets never shown ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NEXUS__GUARDED__PIN": SECRET}, "NEXUS__GUARDED__PIN: expected an integer"),
        ({"NEXUS__GUARDED__PIN": "-5"}, "NEXUS__GUARDED__PIN: expected a value > 0"),
        ({"NEXUS__GUARDED__KEYS": f'[1, "{SECRET}"]'}, "NEXUS__GUARDED__KEYS[1]: expected an"),
        (
            {"NEXUS__AUTH__SERVICE_TOKENS": f'[{{"caller": "a", "sha256": ["{SECRET}"]}}]'},
            "NEXUS__AUTH__SERVICE_TOKENS[0].sha256: expected a string",
        ),
        (
            {"NEXUS__AUTH__SERVICE_TOKENS": f"{{{SECRET}"},
            "NEXUS__AUTH__SERVICE_TOKENS[0]: expected a",
        ),
    ],
)
def test_a_refused_secret_is_not_shown(env: dict[str, str], message: str) -> None:
    cls = SchedulerSettings if "AUTH" in next(iter(env)) else Sample
    with pytest.raises(ConfigError) as caught:
        load_settings(cls, env=env)
    shown = str(caught.value)
    assert shown.startswith(message), shown
    assert shown.endswith("got a secret value (not shown)"), shown
    assert SECRET not in shown and "-5" not in shown


def test_a_refused_value_that_is_not_secret_is_shown(tmp_path: Path) -> None:
    env = {"NEXUS__GUARDED__PLAIN_FILE": written(tmp_path / "plain", "eighty\n")}
    with pytest.raises(ConfigError, match=r"^NEXUS__GUARDED__PLAIN_FILE \(.*\): .*got 'eighty'$"):
        load_settings(Sample, env=env)


def test_secrets_are_not_in_the_repr_of_settings(tmp_path: Path) -> None:
    env = {
        "NEXUS__POSTGRES__DSN": f"postgresql://nexus:{SECRET}@db/nexus",
        "NEXUS__STORAGE__ACCESS_KEY_ID": "AKID" + SECRET,
        "NEXUS__STORAGE__SECRET_ACCESS_KEY": SECRET,
        "NEXUS__SIGNING__KEYS": f'["{SECRET}"]',
        "NEXUS__AUTH__JWT_HS256_SECRET": SECRET * 3,
        "NEXUS__AUTH__SERVICE_TOKENS": f'[{{"caller": "a", "sha256": "{SECRET}"}}]',
        "NEXUS__REDIS__URL": f"redis://:{SECRET}@cache:6379/0",
    }
    shown = repr(load_settings(SchedulerSettings, env=env))
    assert SECRET not in shown
    assert "bucket='nexus'" in shown  # the rest is still there


def test_the_process_names_the_setting_and_the_path_and_exits() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nexus", "migrate"],
        env={"NEXUS__POSTGRES__DSN_FILE": "/run/secrets/absent-dsn", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nexus migrate: configuration error: NEXUS__POSTGRES__DSN_FILE: cannot read "
        "/run/secrets/absent-dsn: No such file or directory"
    ]
