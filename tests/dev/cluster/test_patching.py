"""Patches leave the stored object alone and share nothing with it or with the body."""

from __future__ import annotations

from nexus_dev.cluster.patching import JSON_PATCH, MERGE, apply_patch


def test_merge_patch_copies() -> None:
    target = {"spec": {"a": [1, 2], "b": {"c": 1}}, "keep": {"x": 1}}
    patch = {"spec": {"a": [3], "b": None, "d": {"e": [4]}}}
    result = apply_patch(target, MERGE, patch)
    assert result == {"spec": {"a": [3], "d": {"e": [4]}}, "keep": {"x": 1}}
    result["spec"]["d"]["e"].append(5)
    assert patch["spec"]["d"] == {"e": [4]}
    assert target == {"spec": {"a": [1, 2], "b": {"c": 1}}, "keep": {"x": 1}}


def test_json_patch_copies() -> None:
    target = {"spec": {"a": [1, 2]}, "meta": {"labels": {"k": "v"}}}
    operations = [
        {"op": "add", "path": "/spec/a/-", "value": 3},
        {"op": "copy", "from": "/meta/labels", "path": "/spec/labels"},
        {"op": "replace", "path": "/meta/labels/k", "value": "w"},
    ]
    result = apply_patch(target, JSON_PATCH, operations)
    assert result == {
        "spec": {"a": [1, 2, 3], "labels": {"k": "v"}},
        "meta": {"labels": {"k": "w"}},
    }
    assert target == {"spec": {"a": [1, 2]}, "meta": {"labels": {"k": "v"}}}
