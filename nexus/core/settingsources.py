"""Where setting values come from, before :mod:`nexus.core.config` converts and checks them.

Sources, lowest precedence first (each overrides the ones before it, setting by setting):

1. the defaults written in the settings classes;
2. an optional YAML or TOML settings file (``NEXUS__CONFIG_FILE`` or ``--config``) of the
   shape ``{section: {key: value}}``;
3. a secrets directory (``NEXUS__SECRETS_DIR``), below;
4. environment variables ``NEXUS__SECTION__KEY``, or ``NEXUS__SECTION__KEY_FILE``, below.

Files are how Kubernetes hands Secrets to a pod, so any setting can be read from one:

* **a ``_FILE`` variable**: ``NEXUS__AUTH__JWT_HS256_SECRET_FILE=/var/run/secrets/nexus/jwt``
  sets ``auth.jwt_hs256_secret`` to that file's content; in the optional settings file,
  ``jwt_hs256_secret_file: /path`` does the same. Setting a value and its ``_FILE`` in the
  same place is an error (which would win is a guess).
* **a secrets directory**: ``NEXUS__SECRETS_DIR=/var/run/secrets/nexus``, a folder of files
  named ``SECTION__KEY`` — or ``NEXUS__SECTION__KEY``, so one Secret's keys serve both as
  environment (``envFrom``) and as files. Names beginning with a dot (the ``..data``
  links Kubernetes keeps there) and names without ``__`` are skipped; so are files of
  sections the service does not have, as with variables.

``_FILE`` and the secrets directory work for every setting, not only the secret ones: an
access key id sits in the same Secret as its secret, and a PEM key or a long JSON list
reads better as a file than as a variable.

Guarantees: one trailing newline (``\\n`` or ``\\r\\n``, as editors and ``kubectl create
secret --from-file`` leave them) is stripped and nothing else; a missing, unreadable,
non-UTF-8 or oversized file is a :class:`ConfigError` naming the setting and the path; the
content itself never appears in an error or a log.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from nexus.core.errors import ConfigError

ENV_PREFIX = "NEXUS__"
CONFIG_FILE_ENV = "NEXUS__CONFIG_FILE"
FILE_SUFFIX = "_FILE"
SECRETS_DIR_ENV = "NEXUS__SECRETS_DIR"
MAX_FILE_SIZE = 1024**2
"""A setting is a key, a URL or a JSON list: a larger file is a mistake (a wrong path)."""

Raw = dict[str, tuple[Any, str]]
"""Setting name → (value, where it came from, for error messages)."""


def read_setting_file(path: str | Path, setting: str) -> str:
    """The content of ``path`` as the value of ``setting``, less one trailing newline."""
    if not str(path).strip():
        raise ConfigError(f"{setting}: expected the path of a file, got an empty value")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(f"{setting}: {path} is larger than {MAX_FILE_SIZE} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{setting}: {path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def resolve_file_settings(raw: Raw, fields: Collection[str], source: str) -> Raw:
    """``raw`` with every ``<field>_file`` entry replaced by ``<field>`` read from that file.
    A field whose own name ends in ``_file`` is left alone. ``source`` names the place
    (``the environment``, a file) in the error when both forms are given there."""
    resolved: Raw = {}
    for key, (value, origin) in raw.items():
        base = key[: -len(FILE_SUFFIX)] if key.endswith(FILE_SUFFIX.lower()) else None
        if base is None or key in fields or base not in fields:
            resolved.setdefault(key, (value, origin))
            continue
        if base in raw:
            raise ConfigError(
                f"{origin}: {raw[base][1]} is set too in {source}; give a value or a file"
            )
        if not isinstance(value, str):
            raise ConfigError(f"{origin}: expected the path of a file")
        resolved[base] = (read_setting_file(value, origin), f"{origin} ({value})")
    return resolved


def secrets_directory(env: Mapping[str, str], sections: Collection[str]) -> dict[str, Raw]:
    """The settings in ``NEXUS__SECRETS_DIR`` (when set), by section, for ``sections``."""
    directory = env.get(SECRETS_DIR_ENV)
    if not directory:
        return {}
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        raise ConfigError(
            f"{SECRETS_DIR_ENV}: cannot read the folder {directory}: {exc.strerror or exc}"
        ) from None
    found: dict[str, Raw] = {}
    for entry in entries:
        name = entry.name
        if name.startswith(".") or not entry.is_file():
            continue
        section, separator, key = name.upper().removeprefix("NEXUS__").partition("__")
        if not separator or section.lower() not in sections:
            continue
        origin = f"{SECRETS_DIR_ENV} file {entry.path}"
        found.setdefault(section.lower(), {})[key.lower()] = (
            read_setting_file(entry.path, origin),
            origin,
        )
    return found


def raw_settings(
    sections: Mapping[str, Collection[str]],
    env: Mapping[str, str],
    config_file: str | Path | None = None,
) -> dict[str, Raw]:
    """Every value given for ``sections`` (section name → its setting names), by section,
    the one of highest precedence for each setting; values are not converted yet."""
    path = config_file or env.get(CONFIG_FILE_ENV) or None
    file_values = read_config_file(Path(path)) if path else {}
    in_directory = secrets_directory(env, sections)
    found: dict[str, Raw] = {}
    for section, names in sections.items():
        in_file = file_values.get(section, {})
        if not isinstance(in_file, Mapping):
            raise ConfigError(f"{section} in {path}: expected a mapping of settings")
        from_file = {str(k): (v, f"{section}.{k} in {path}") for k, v in in_file.items()}
        env_prefix = f"{ENV_PREFIX}{section.upper()}__"
        from_env = {
            name[len(env_prefix) :].lower(): (value, name)
            for name, value in env.items()
            if name.startswith(env_prefix)
        }
        found[section] = {
            **resolve_file_settings(from_file, names, str(path)),
            **in_directory.get(section, {}),
            **resolve_file_settings(from_env, names, "the environment"),
        }
    return found


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings file: YAML, or TOML when its name ends in ``.toml``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{CONFIG_FILE_ENV}: cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{CONFIG_FILE_ENV}: {path} is not valid: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{CONFIG_FILE_ENV}: {path} must hold a mapping of sections")
    return data
