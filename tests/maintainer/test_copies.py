"""What a copy is and whose an object is: the pure part of the configuration controller."""

from __future__ import annotations

from typing import Any

from maintainer.copies import (
    CONFIG_MAP,
    MANAGED_BY_LABEL,
    MANAGER,
    OWNER_LABEL,
    SECRET,
    SOURCE_UID,
    TEMPLATE,
    Mark,
    copy_of,
    in_step,
    references,
)

MARK = Mark("nexus")


def source(uid: str = "uid-1", **fields: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "x",
            "namespace": "nexus",
            "uid": uid,
            "resourceVersion": "7",
            "labels": {"team": "ml", "argocd.argoproj.io/instance": "nexus"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        **fields,
    }


def test_references_come_from_env_from_and_value_from() -> None:
    template = {
        "spec": {
            "runtimeEnvironment": {
                "mappedEnvironmentVariables": [
                    {"secretRef": {"name": "db"}},
                    {"configMapRef": {"name": "settings"}, "prefix": "APP_"},
                    {"secretRef": {}},  # no name: nothing
                    "not an object",
                ],
                "environmentVariables": [
                    {"name": "A", "value": "1"},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "b"}}},
                    {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "more", "key": "c"}}},
                ],
            }
        }
    }
    assert references(template) == ({"db", "keys"}, {"settings", "more"})
    assert references({"spec": {"runtimeEnvironment": None}}) == (set(), set())
    assert references({}) == (set(), set())


def test_the_mounted_configuration_and_the_allowed_secrets_are_references() -> None:
    runtime = {
        "configuration": {"configMap": "forecast-config", "mountPath": "/etc/forecast"},
        "allowedSecrets": ["forecast-credentials", "", 7],
    }
    assert references({"spec": {"runtimeEnvironment": runtime}}) == (
        {"forecast-credentials"},
        {"forecast-config"},
    )


def test_a_copy_carries_the_content_and_the_mark_not_the_sources_metadata() -> None:
    copy = copy_of(TEMPLATE, source(spec={"container": {"image": "a"}}, status={"x": 1}))
    body = MARK.body(copy)
    assert body["spec"] == {"container": {"image": "a"}}
    assert "status" not in body
    assert body["metadata"] == {
        "name": "x",
        "labels": {MANAGED_BY_LABEL: MANAGER, OWNER_LABEL: "nexus"},
        "annotations": {SOURCE_UID: "uid-1"},
    }
    assert body["kind"] == "NexusAlgorithmTemplate"
    assert body["apiVersion"] == "science.sneaksanddata.com/v1"


def test_a_copy_read_back_with_the_servers_defaults_is_in_step() -> None:
    copy = copy_of(SECRET, source(data={"k": "dg=="}))
    stored = {**MARK.body(copy), "type": "Opaque"}  # the server's default type
    stored["metadata"] = {**stored["metadata"], "uid": "copy-uid", "resourceVersion": "3"}
    assert in_step(stored, copy)
    assert not in_step({**stored, "data": {"k": "dw=="}}, copy)
    assert not in_step({**stored, "immutable": True}, copy)
    other_source = copy_of(SECRET, source(uid="uid-2", data={"k": "dg=="}))
    assert not in_step(stored, other_source)  # made from an earlier object of that name
    empty = copy_of(CONFIG_MAP, source())
    assert in_step({**MARK.body(empty), "data": {}}, empty)


def test_an_update_keeps_what_others_added_and_the_version_read() -> None:
    copy = copy_of(SECRET, source(type="kubernetes.io/basic-auth", data={"u": "dQ=="}))
    found = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "x",
            "uid": "copy-uid",
            "resourceVersion": "12",
            "labels": {**MARK.labels, "added": "yes"},
            "annotations": {SOURCE_UID: "old", "note": "kept"},
        },
        "type": "Opaque",
        "data": {"old": "eA=="},
        "immutable": False,
    }
    body = MARK.update(found, copy)
    assert body["metadata"]["resourceVersion"] == "12"
    assert body["metadata"]["labels"] == {**MARK.labels, "added": "yes"}
    assert body["metadata"]["annotations"] == {SOURCE_UID: "uid-1", "note": "kept"}
    assert body["type"] == "kubernetes.io/basic-auth"
    assert body["data"] == {"u": "dQ=="}
    assert "immutable" not in body
    assert in_step(body, copy)


def test_whose_an_object_is() -> None:
    copy = copy_of(TEMPLATE, source(spec={}))
    ours = {"metadata": {"uid": "u2", "labels": MARK.labels}}
    assert MARK.ownership(ours, copy) == "ours"
    assert MARK.ownership({"metadata": {"uid": "u3", "labels": {}}}, copy) == "foreign"
    other = {"metadata": {"uid": "u4", "labels": Mark("elsewhere").labels}}
    assert MARK.ownership(other, copy) == "foreign"
    only_one = {"metadata": {"uid": "u5", "labels": {OWNER_LABEL: "nexus"}}}
    assert MARK.ownership(only_one, copy) == "foreign"
    # the controller cluster's own namespace, seen as a shard: the source itself
    assert MARK.ownership({"metadata": {"uid": "uid-1"}}, copy) == "source"
    assert MARK.selector == f"{MANAGED_BY_LABEL}={MANAGER},{OWNER_LABEL}=nexus"
