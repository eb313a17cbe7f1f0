"""A container's environment as the kubelet resolves it: ``$(VAR)`` references expanded.

Kubernetes reads an ``env[].value`` as a template, not as text: ``$(NAME)`` becomes the
value of ``NAME`` when a variable of that name is defined before it in the container's
``env`` (left as written when none is), and ``$$`` becomes ``$``; any other ``$`` stays
(``expansion.Expand`` in Kubernetes' ``third_party/forked/golang/expansion``). The local
cluster's containers see their environment resolved the same way, so that a value which
Nexus writes for Kubernetes (a ``$`` meant literally is doubled) arrives as a real
container would see it.

A container's ``command`` and ``args`` are expanded the same way, against its whole
environment (:func:`container_argv`).

Not modelled: ``envFrom`` sources and a Service's variables as targets of a reference
(the local cluster resolves neither).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def expand(value: str, defined: Mapping[str, str]) -> str:
    """``value`` with its ``$(NAME)`` references to ``defined`` resolved and ``$$`` read
    as ``$``, as the kubelet expands an env value."""
    if "$" not in value:
        return value
    parts: list[str] = []
    start = 0
    at = value.find("$")
    while 0 <= at < len(value) - 1:
        parts.append(value[start:at])
        following = value[at + 1]
        close = value.find(")", at + 2) if following == "(" else -1
        if close >= 0:  # a reference: its value, or itself when nothing defines it
            name = value[at + 2 : close]
            parts.append(defined.get(name, f"$({name})"))
            start = close + 1
        else:  # "$$" is "$"; "$(" with no ")" after it, or "$x", stays as it is
            parts.append("$" if following == "$" else value[at : at + 2])
            start = at + 2
        at = value.find("$", start)
    parts.append(value[start:])
    return "".join(parts)


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment ``container`` runs with: each plain value expanded against the
    variables defined before it (an entry ``valueFrom`` a source reads as empty here).
    Its entries are dicts (validated at the Job's creation): typed so, the compiled
    module reads them with the dicts' own lookups rather than method calls."""
    env: dict[str, str] = {}
    entries: list[dict[str, Any]] = container.get("env") or []
    for entry in entries:
        value = entry.get("value", "")
        if type(value) is not str:
            value = str(value)
        env[entry["name"]] = expand(value, env) if "$" in value else value
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The ``command`` then ``args`` ``container`` starts with, each expanded against its
    environment ``env`` (:func:`container_env`), as the kubelet expands them."""
    given = [*(container.get("command") or ()), *(container.get("args") or ())]
    return [expand(str(arg), env) for arg in given]
