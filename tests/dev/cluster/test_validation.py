"""A Job's validation as the API server words it: each bad env entry named by its index."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from nexus_dev.cluster.statuses import ApiError
from nexus_dev.cluster.validation import validate_job


def job(env: list[Any], resources: dict[str, Any] | None = None) -> dict[str, Any]:
    container = {"name": "c", "image": "i:1", "env": env, "resources": resources or {}}
    return {
        "metadata": {"name": "j"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


def causes(body: dict[str, Any]) -> list[str]:
    with pytest.raises(ApiError) as raised:
        validate_job(body)
    return [cause["field"] for cause in orjson.loads(raised.value.body())["details"]["causes"]]


def test_every_unnamed_env_entry_is_named_by_its_index() -> None:
    named = [{"name": "A", "value": "1"}, {"name": "B"}]
    validate_job(job(named))  # all named: valid
    bad = [{"name": "A"}, {"value": "x"}, {"name": "B"}, "C", {"name": ""}]
    assert causes(job(bad)) == [
        "spec.template.spec.containers[0].env[1].name",
        "spec.template.spec.containers[0].env[3].name",
        "spec.template.spec.containers[0].env[4].name",
    ]


def test_resources_judged_again_give_the_same_causes() -> None:
    """The causes of resources are kept per distinct limits and requests: asked again, a
    Job gets the same ones, and a list kept for one is never another's to change."""
    over = {"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}}
    first = causes(job([], over))
    assert first == ["spec.template.spec.containers[0].resources.requests[memory]"]
    assert causes(job([], dict(over))) == first
    validate_job(job([], {"limits": {"memory": "2Gi"}, "requests": {"memory": "1Gi"}}))
    bad = {"limits": {"memory": "lots"}}
    assert causes(job([], bad)) == causes(job([], dict(bad)))
    assert len(causes(job([], bad))) == 1


@pytest.mark.parametrize("quantity", [["1Gi"], {"value": "1Gi"}, True])
def test_a_quantity_that_is_no_json_quantity_is_refused_by_name(quantity: Any) -> None:
    """A list, an object or a boolean where a quantity belongs is refused as the API server
    refuses it, naming the field, never with an error of the server; null reads as zero."""
    bad = {"limits": {"memory": quantity}, "requests": {"cpu": "1"}}
    assert causes(job([], bad)) == ["spec.template.spec.containers[0].resources.limits[memory]"]
    validate_job(job([], {"limits": {"memory": None}, "requests": {"cpu": "1"}}))


def test_true_and_one_are_judged_each_for_itself_whichever_comes_first() -> None:
    """Judged resources are kept by what they say: ``true`` is no quantity and ``1`` is,
    though Python finds them equal and hashes them alike."""
    validate_job(job([], {"limits": {"cpu": 1}}))
    assert causes(job([], {"limits": {"cpu": True}})) == [
        "spec.template.spec.containers[0].resources.limits[cpu]"
    ]
    assert causes(job([], {"limits": {"memory": True}})) == [
        "spec.template.spec.containers[0].resources.limits[memory]"
    ]
    validate_job(job([], {"limits": {"memory": 1}}))
