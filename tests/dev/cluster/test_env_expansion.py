"""A container's env as the simulated kubelet resolves it: Kubernetes' ``$(VAR)`` rules."""

from __future__ import annotations

import pytest

from nexus_dev.cluster.expansion import container_argv, container_env, expand


@pytest.mark.parametrize(
    ("value", "expanded"),
    [
        ("plain", "plain"),
        ("$(A)", "x"),  # defined before: its value
        ("$(UNDEFINED)", "$(UNDEFINED)"),  # kept as written
        ("$$(A)", "$(A)"),  # escaped
        ("$$", "$"),
        ("$$$", "$$"),
        ("$$$(A)", "$x"),
        ("$(A", "$(A"),  # no closing parenthesis
        ("a$b", "a$b"),
        ("end$", "end$"),
        ("$()", "$()"),
        ("$(A)-$(A)", "x-x"),
    ],
)
def test_a_value_is_expanded_as_the_kubelet_expands_it(value: str, expanded: str) -> None:
    assert expand(value, {"A": "x"}) == expanded


def test_a_reference_sees_only_the_variables_defined_before_it() -> None:
    container = {
        "env": [
            {"name": "FIRST", "value": "1"},
            {"name": "BOTH", "value": "$(FIRST)+$(LATER)"},
            {"name": "LATER", "value": "2"},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ]
    }
    assert container_env(container) == {
        "FIRST": "1",
        "BOTH": "1+$(LATER)",
        "LATER": "2",
        "FROM_SECRET": "",
    }


def test_command_and_args_are_expanded_against_the_whole_environment() -> None:
    container = {
        "command": ["run", "$(LATER)"],
        "args": ["--a=$(FIRST)", "--b=$$(FIRST)", "--c=$("],
        "env": [{"name": "FIRST", "value": "1"}, {"name": "LATER", "value": "2"}],
    }
    argv = container_argv(container, container_env(container))
    assert argv == ["run", "2", "--a=1", "--b=$(FIRST)", "--c=$("]
