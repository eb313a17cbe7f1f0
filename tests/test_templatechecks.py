"""Templates whose runs could not run are found when they are read; images a request may
run instead of its template's are the template's to allow."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.core.templatechecks import (
    check_image,
    check_template,
    ready_condition,
    same_condition,
)
from nexus.core.templates import AppliedConfiguration, InvalidConfiguration, parse_template


def resource(**container: Any) -> dict[str, Any]:
    limits = container.pop("limits", {})
    return {
        "metadata": {"name": "forecast"},
        "spec": {
            "container": {
                "image": "team/forecast",
                "registry": "ghcr.io",
                "versionTag": "1.2.3",
                **container,
            },
            "computeResources": {"cpuLimit": "500m", "memoryLimit": "2Gi", **limits},
            "workgroupRef": {"name": "default"},
        },
    }


@pytest.mark.parametrize(
    "container",
    [
        {},
        {"registry": "registry.example.com:5000/mirror"},
        {"registry": ""},
        {"image": "team/sub_model-2.1", "versionTag": "v2_rc.1"},
        {"serviceAccountName": "runner.algorithms"},
        {"limits": {"cpuLimit": "2", "memoryLimit": "1.5Gi"}},
        {"limits": {"cpuLimit": 1, "memoryLimit": "1e9"}},
        {"limits": {"customResources": {"nvidia.com/gpu": "1"}}},
        {"allowedImages": ["ghcr.io/team/*", "docker.io/library/python"]},
    ],
)
def test_a_template_kubernetes_takes_passes(container: dict[str, Any]) -> None:
    check_template(parse_template(resource(**container)))


@pytest.mark.parametrize(
    ("container", "field", "names"),
    [
        ({"image": "Team/Forecast"}, "spec.container.image", "'Team/Forecast'"),
        ({"image": "team//forecast"}, "spec.container.image", "team//forecast"),
        ({"image": "team/forecast:1.0"}, "spec.container.image", "team/forecast:1.0"),
        ({"registry": "https://ghcr.io"}, "spec.container.registry", "https://ghcr.io"),
        ({"versionTag": "1.0 beta"}, "spec.container.versionTag", "'1.0 beta'"),
        ({"serviceAccountName": "Runner"}, "spec.container.serviceAccountName", "'Runner'"),
        ({"limits": {"cpuLimit": "lots"}}, "spec.computeResources.cpuLimit", "'lots'"),
        ({"limits": {"memoryLimit": "2 GB"}}, "spec.computeResources.memoryLimit", "'2 GB'"),
        (
            {"limits": {"customResources": {"nvidia.com/gpu": "one"}}},
            "spec.computeResources.customResources.nvidia.com/gpu",
            "'one'",
        ),
        ({"allowedImages": ["ghcr.io/Team/*"]}, "spec.container.allowedImages[0]", "Team"),
    ],
)
def test_a_template_kubernetes_would_refuse_is_found_naming_the_field(
    container: dict[str, Any], field: str, names: str
) -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        check_template(parse_template(resource(**container)))
    assert caught.value.field == f"template forecast: {field}"
    assert names in caught.value.message


def applied(registry: str, image: str) -> AppliedConfiguration:
    return {"registry": registry, "image": image}  # type: ignore[typeddict-item]


def test_only_the_templates_own_image_or_an_allowed_one_runs() -> None:
    own = parse_template(resource())
    assert check_image(own, applied("ghcr.io", "team/forecast")) is None
    refused = check_image(own, applied("ghcr.io", "team/other"))
    assert refused is not None and "'ghcr.io/team/other'" in refused and "none" in refused
    assert check_image(own, applied("docker.io", "team/forecast")) is not None

    listing = parse_template(resource(allowedImages=["ghcr.io/team/*", "docker.io/library/python"]))
    assert check_image(listing, applied("ghcr.io", "team/other")) is None
    assert check_image(listing, applied("ghcr.io", "team/deep/model")) is None
    assert check_image(listing, applied("docker.io", "library/python")) is None
    for registry, image in (
        ("ghcr.io", "teammate/x"),  # a prefix is a path, not a string prefix
        ("docker.io", "library/python-evil"),
        ("evil.io/ghcr.io", "team/x"),
        ("", "team/forecast"),
    ):
        assert check_image(listing, applied(registry, image)) is not None, (registry, image)


def test_the_ready_condition_is_written_again_only_when_it_changes() -> None:
    bad = ready_condition("cpuLimit: 'lots' is not a quantity", generation=3)
    assert bad["status"] == "False" and bad["reason"] == "InvalidTemplate"
    assert not same_condition(None, bad)
    stored = {"conditions": [{**bad, "lastTransitionTime": "2020-01-01T00:00:00Z"}]}
    assert same_condition(stored, bad)
    assert not same_condition(stored, ready_condition(None, generation=3))
    assert not same_condition(stored, ready_condition("cpuLimit: 'lots' ...", generation=4))
