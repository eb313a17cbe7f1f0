"""Label and field selectors, parsed and matched as the Kubernetes API server does.

A selector is parsed once per request (list or watch) into a predicate over an object; the
watch fan-out calls that predicate for every change, so matching is a few dictionary
look-ups and no allocation.

Label selectors accept the full grammar of ``k8s.io/apimachinery/pkg/labels``:
equality (``k=v``, ``k==v``, ``k!=v``), sets (``k in (a,b)``, ``k notin (a,b)``) and
existence (``k``, ``!k``), joined by commas. Field selectors accept ``=``, ``==`` and
``!=`` on the fields each resource supports; any other field is refused with the same
``400 BadRequest`` a real server gives (``field label not supported``), so a client that
would fail against a real cluster fails here too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nexus_dev.cluster.statuses import ApiError

Predicate = Callable[[dict[str, Any]], bool]
"""Whether a stored object (a plain dict) is selected."""

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),!=]+)")

#: Fields each resource lets a field selector use, beyond ``metadata.name`` and
#: ``metadata.namespace`` (which every resource has). Taken from the API server's field
#: label conversion functions.
FIELDS: dict[str, frozenset[str]] = {
    "jobs": frozenset({"status.successful"}),
    "secrets": frozenset({"type"}),
    "pods": frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "events": frozenset(
        {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
}


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term of a label selector: ``key``, an operator and its values."""

    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        value = labels.get(self.key)
        if op in ("=", "in"):
            return value is not None and value in self.values
        # "!=" and "notin" also match objects without the label, as in Kubernetes.
        return value is None or value not in self.values


def _bad(message: str) -> ApiError:
    return ApiError.bad_request(message)


def parse_label_selector(text: str | None) -> list[Requirement]:
    """The requirements of ``text``; an empty list selects everything."""
    if not text or not text.strip():
        return []
    tokens: list[str] = _TOKEN.findall(text)
    if "".join(tokens) != re.sub(r"\s+", "", text):
        raise _bad(f"unable to parse requirement: invalid label selector {text!r}")
    requirements: list[Requirement] = []
    pos = 0

    def take() -> str | None:
        nonlocal pos
        if pos >= len(tokens):
            return None
        pos += 1
        return tokens[pos - 1]

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    while True:
        first = take()
        if first is None:
            raise _bad(f"unable to parse requirement: found '', expected: identifier in {text!r}")
        if first == "!":
            key = take() or ""
            _check_key(key)
            requirements.append(Requirement(key, "!", frozenset()))
        else:
            key = first
            _check_key(key)
            op = peek()
            if op is None or op == ",":
                requirements.append(Requirement(key, "exists", frozenset()))
            elif op in ("=", "==", "!="):
                take()
                value = peek()
                if value is None or value in (",", "(", ")", "=", "!=", "==", "!"):
                    value = ""
                else:
                    take()
                _check_value(value)
                operator = "!=" if op == "!=" else "="
                requirements.append(Requirement(key, operator, frozenset((value,))))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise _bad(f"unable to parse requirement: found '{peek()}', expected: '('")
                values: set[str] = set()
                while True:
                    value = take()
                    if value is None:
                        raise _bad("unable to parse requirement: missing ')'")
                    if value == ")":
                        break
                    if value == ",":
                        continue
                    _check_value(value)
                    values.add(value)
                if not values:
                    raise _bad(f"unable to parse requirement: {op} requires one or more values")
                requirements.append(Requirement(key, op, frozenset(values)))
            else:
                raise _bad(
                    f"unable to parse requirement: found '{op}', "
                    "expected: in, notin, =, ==, !=, gt, lt"
                )
        separator = take()
        if separator is None:
            break
        if separator != ",":
            raise _bad(f"unable to parse requirement: found '{separator}', expected: ','")
    return requirements


def _check_key(key: str) -> None:
    if not key or len(key.rsplit("/", 1)[-1]) > 63 or not _KEY.match(key):
        raise _bad(f"unable to parse requirement: invalid label key {key!r}")


def _check_value(value: str) -> None:
    if len(value) > 63 or not _VALUE.match(value):
        raise _bad(f"unable to parse requirement: invalid label value {value!r}")


def parse_field_selector(text: str | None, resource: str) -> list[tuple[str, bool, str]]:
    """``(field, equal, value)`` terms of ``text`` for ``resource``; 400 on unknown fields."""
    if not text or not text.strip():
        return []
    allowed = FIELDS.get(resource, frozenset()) | {"metadata.name", "metadata.namespace"}
    terms: list[tuple[str, bool, str]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        for op in ("!=", "==", "="):
            if op in part:
                field, value = part.split(op, 1)
                break
        else:
            raise _bad(f"invalid selector: '{text}'; can't understand '{part}'")
        field = field.strip()
        if field not in allowed:
            raise _bad(f'field label not supported: "{field}"')
        terms.append((field, op != "!=", value.strip()))
    return terms


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string a field selector compares for ``path`` (``""`` when absent)."""
    return _field_reader(path)(obj)


def _field_reader(path: str) -> Callable[[Mapping[str, Any]], str]:
    """A function that reads ``path`` of an object as :func:`field_value` does, with the
    path split once: a watch applies its selector to every change of its resource."""
    if path == "source":  # events: ``source`` means ``source.component``
        path = "source.component"
    parts = tuple(path.split("."))

    def read(obj: Mapping[str, Any]) -> str:
        node: Any = obj
        for part in parts:
            # stored objects are plain dicts: the exact type check spares the ABC's
            if type(node) is not dict and not isinstance(node, Mapping):
                return ""
            node = node.get(part)
        if node is None:
            return ""
        if type(node) is str:
            return node
        if isinstance(node, bool):
            return "true" if node else "false"
        return str(node)

    return read


def compile_predicate(
    labels: Sequence[Requirement], fields: Sequence[tuple[str, bool, str]]
) -> Predicate | None:
    """One predicate for both selectors; ``None`` when they select everything."""
    if not labels and not fields:
        return None
    label_terms = tuple(labels)
    field_terms = tuple((_field_reader(path), equal, value) for path, equal, value in fields)
    if not label_terms and len(field_terms) == 1:  # one field (``reason=FailedCreate``)
        read, equal, value = field_terms[0]
        path = fields[0][0]
        if "." not in path and path != "source":  # a top-level field: read inline
            key = path

            def top_field(obj: dict[str, Any]) -> bool:
                node = obj.get(key)
                if type(node) is str:  # what read() returns as it is
                    return (node == value) == equal
                return (read(obj) == value) == equal

            return top_field

        def one_field(obj: dict[str, Any]) -> bool:
            return (read(obj) == value) == equal

        return one_field
    if not field_terms and len(label_terms) == 1 and label_terms[0].operator in ("=", "in"):
        key, values = label_terms[0].key, label_terms[0].values  # one label (``component=run``)

        def one_label(obj: dict[str, Any]) -> bool:
            # isinstance, not ``or {}``: compiled, the dicts' own lookups, no method calls
            metadata = obj.get("metadata")
            labels = metadata.get("labels") if isinstance(metadata, dict) else None
            value = labels.get(key) if isinstance(labels, dict) else None
            return value is not None and value in values

        return one_label

    def predicate(obj: dict[str, Any]) -> bool:
        if label_terms:
            object_labels = obj.get("metadata", {}).get("labels") or {}
            for requirement in label_terms:
                if not requirement.matches(object_labels):
                    return False
        for read, equal, value in field_terms:  # noqa: SIM110 (all() adds a generator per call)
            if (read(obj) == value) != equal:
                return False
        return True

    return predicate


def selector_predicate(
    label_selector: str | None, field_selector: str | None, resource: str
) -> Predicate | None:
    """Parse both selectors of a request into one predicate (``None``: everything)."""
    return compile_predicate(
        parse_label_selector(label_selector), parse_field_selector(field_selector, resource)
    )


def match_labels(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a ``LabelSelector`` object (``matchLabels``/``matchExpressions``) matches."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}.get(
            expression.get("operator", ""), "in"
        )
        requirement = Requirement(expression["key"], op, frozenset(expression.get("values") or ()))
        if not requirement.matches(labels):
            return False
    return True
