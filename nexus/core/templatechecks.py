"""What a template's runs would be refused for, found where the template and the run enter.

A ``NexusAlgorithmTemplate`` is only a custom resource: Kubernetes stores whatever its
schema lets through, and an image reference no registry can serve or a quantity the API
server cannot parse surfaces only when a run's Job is created (422) or its pod pulled
(``InvalidImageName``) — every run of it failing at dispatch. :func:`check_template` finds
those problems when the template is read, so the catalog can refuse its runs at once with
a 400 naming the problem (:mod:`nexus.scheduler.catalog`), and the template's status can
say why it cannot run (:func:`ready_condition`).

:func:`check_image` is the other half: a request may run another image than its
template's (``customConfiguration`` image/registry) only from the template's
``container.allowedImages``, since its pod runs with the template's service account and
Secrets. Without a list only the template's own image runs (any tag).

Guarantees: every problem names the template's field (``spec.computeResources.cpuLimit``)
and the value; a template that passes makes Jobs the API server accepts as far as these
fields go.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, TypedDict

from nexus.core.templates import AppliedConfiguration, InvalidConfiguration, Template

# Docker's reference grammar (distribution/reference), as the container runtimes apply it.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
_HOST = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_REGISTRY = re.compile(rf"^{_HOST}(?::[0-9]+)?(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
# Kubernetes resource quantities (k8s.io/apimachinery resource.Quantity): a decimal number,
# optionally with an exponent or a binary/decimal suffix.
_QUANTITY = re.compile(
    r"^[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?\Z"
)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_MAX_IMAGE = 255


class Condition(TypedDict):
    """A Kubernetes status condition, as a template's ``status.conditions`` holds it."""

    type: str
    status: str
    reason: str
    message: str
    observedGeneration: int
    lastTransitionTime: str


def image_reference(registry: str, image: str) -> str:
    """``registry/image`` as a pod names it (no tag)."""
    return f"{registry}/{image}" if registry else image


def check_template(template: Template) -> None:
    """:class:`InvalidConfiguration` naming the first field of ``template`` that would make
    its runs' Jobs refused by the API server or unpullable."""
    spec = f"template {template.name}: spec"
    if not _REPOSITORY.match(template.image):
        raise InvalidConfiguration(
            f"{spec}.container.image",
            f"{template.image[:100]!r} is not an image reference (lower-case path components"
            " such as team/model)",
        )
    if template.registry and not _REGISTRY.match(template.registry):
        raise InvalidConfiguration(
            f"{spec}.container.registry",
            f"{template.registry[:100]!r} is not a registry (a host such as ghcr.io, with an"
            " optional port and path)",
        )
    if not _TAG.match(template.version_tag):
        raise InvalidConfiguration(
            f"{spec}.container.versionTag", f"{template.version_tag[:100]!r} is not an image tag"
        )
    if len(image_reference(template.registry, template.image)) > _MAX_IMAGE:
        raise InvalidConfiguration(f"{spec}.container.image", "the image reference is too long")
    if template.service_account is not None and not _DNS_SUBDOMAIN.match(template.service_account):
        raise InvalidConfiguration(
            f"{spec}.container.serviceAccountName",
            f"{template.service_account[:100]!r} is not a ServiceAccount name",
        )
    quantities = {
        "computeResources.cpuLimit": template.cpu_limit,
        "computeResources.memoryLimit": template.memory_limit,
        **{
            f"computeResources.customResources.{k}": v for k, v in template.custom_resources.items()
        },
    }
    for where, value in quantities.items():
        if not _QUANTITY.match(value):
            raise InvalidConfiguration(
                f"{spec}.{where}",
                f"{value[:100]!r} is not a quantity Kubernetes can parse (such as 500m, 2 or 4Gi)",
            )
    for i, allowed in enumerate(template.allowed_images):
        prefix = allowed.removesuffix("/*")
        if not (_REGISTRY.match(prefix) or _REPOSITORY.match(prefix)):
            raise InvalidConfiguration(
                f"{spec}.container.allowedImages[{i}]",
                f"{allowed[:100]!r} is not an image (registry/repository) or a prefix of"
                " images ending in /*",
            )


def check_image(template: Template, applied: AppliedConfiguration) -> str | None:
    """Why the image of ``applied`` may not run with ``template``, or ``None``. The
    template's own image (any tag) may; another only when ``container.allowedImages``
    lists it or a prefix of it (``ghcr.io/team/*``)."""
    wanted = image_reference(applied["registry"], applied["image"])
    if wanted == image_reference(template.registry, template.image):
        return None
    for allowed in template.allowed_images:
        if wanted == allowed or (
            allowed.endswith("/*") and wanted.startswith(allowed.removesuffix("*"))
        ):
            return None
    listed = ", ".join(template.allowed_images) or "none"
    return (
        f"image {wanted!r} is not one template {template.name!r} may run"
        f" (container.allowedImages: {listed})"
    )


def ready_condition(
    problem: str | None, generation: int, since: datetime | None = None
) -> Condition:
    """The ``Ready`` condition of a template: ``True``, or ``False`` with the problem."""
    return {
        "type": "Ready",
        "status": "False" if problem else "True",
        "reason": "InvalidTemplate" if problem else "Valid",
        "message": problem or "runs of this template are accepted",
        "observedGeneration": generation,
        "lastTransitionTime": (since or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def same_condition(current: Any, wanted: Condition) -> bool:
    """Whether a template's stored ``status`` already says what ``wanted`` says (its time
    aside), so that nothing is written again."""
    if not isinstance(current, dict):
        return False
    found = [c for c in current.get("conditions") or () if isinstance(c, dict)]
    ready = next((c for c in found if c.get("type") == "Ready"), None)
    return ready is not None and all(
        ready.get(k) == wanted[k] for k in ("status", "reason", "message", "observedGeneration")
    )
