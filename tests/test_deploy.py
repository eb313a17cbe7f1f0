"""The Kubernetes manifests in ``deploy/`` agree with the code they run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from maintainer.settings import MaintainerSettings
from nexus.core.config import HttpSettings, load_settings
from nexus.core.lifecycle import create_base_app
from nexus.scheduler.settings import SchedulerSettings
from receiver.settings import ReceiverSettings

DEPLOY = Path(__file__).parent.parent / "deploy"
SETTINGS: dict[str, type[Any]] = {
    "scheduler": SchedulerSettings,
    "receiver": ReceiverSettings,
    "maintainer": MaintainerSettings,
}


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _deployments() -> dict[str, dict[str, Any]]:
    found = {}
    for document in _documents("kubernetes/services.yaml"):
        if document["kind"] == "Deployment":
            container = document["spec"]["template"]["spec"]["containers"][0]
            found[container["args"][0]] = document
    return found


def _shared() -> dict[str, str]:
    """The ConfigMap and the Secret every service reads."""
    shared = {}
    for document in _documents("kubernetes/config.yaml"):
        shared.update(document.get("data") or document.get("stringData") or {})
    return shared


def _own(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "from-the-pod") for e in container.get("env", [])}


def _prefixes(settings_class: type[Any]) -> set[str]:
    return {f"NEXUS__{section.upper()}__" for section in settings_class.__dataclass_fields__}


def test_every_service_is_deployed_and_every_shared_setting_read() -> None:
    assert set(_deployments()) == set(SETTINGS)
    read = set().union(*(_prefixes(c) for c in SETTINGS.values()))
    for name in _shared():
        assert any(name.startswith(prefix) for prefix in read), name


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_a_deployment_gives_its_service_settings_it_reads(service: str) -> None:
    deployment = _deployments()[service]
    own = _own(deployment)
    for name in own:
        assert any(name.startswith(p) for p in _prefixes(SETTINGS[service])), (service, name)
    # a section's unknown key or a bad value raises (a section the service lacks is skipped)
    settings = load_settings(SETTINGS[service], env={**_shared(), **own})
    http: HttpSettings = settings.http
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert [p["containerPort"] for p in container["ports"]] == [http.port], service
    # stopping: drain, loops (then their cancellation), then the requests still in flight
    worst_stop = http.drain_delay + http.shutdown_timeout * 2.25
    assert pod["terminationGracePeriodSeconds"] > worst_stop, service


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_probes_ask_routes_every_service_serves(service: str) -> None:
    container = _deployments()[service]["spec"]["template"]["spec"]["containers"][0]
    app = create_base_app(service, HttpSettings())
    served = {r.resource.canonical for r in app.router.routes() if isinstance(r, web.ResourceRoute)}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in served, (service, probe)
        assert container[probe]["httpGet"]["port"] == "http", (service, probe)
