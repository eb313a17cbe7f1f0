"""The scheduler's /openapi.json against the routes it serves."""

from __future__ import annotations

import re

import pytest

from nexus.core.config import HttpSettings
from nexus.core.httpapi import ErrorAnswer, RunStatus
from nexus.core.lifecycle import create_base_app
from nexus.core.retrying import AttemptRecord
from nexus.scheduler.api import AcceptedAnswer, RunAnswer, add_routes
from nexus.scheduler.batches import ListedRun, add_batch_routes
from nexus.scheduler.bulk import add_bulk_routes
from nexus.scheduler.goapi import GoAccepted, add_go_routes
from nexus.scheduler.goshapes import GoCheckpoint, GoRequestResult, GoTaggedResult
from nexus.scheduler.openapi import add_openapi_route, document
from nexus.scheduler.quotas import UsageAnswer
from nexus.scheduler.schedules import ScheduleAnswer, add_schedule_routes


def test_the_openapi_document_describes_every_route_and_no_other() -> None:
    """Each route the scheduler serves, with its method, is in the document, and the
    document names none it does not serve; the tag limit is the deployment's."""
    app = create_base_app("scheduler", HttpSettings())
    add_routes(app)
    add_batch_routes(app)
    add_bulk_routes(app)
    add_go_routes(app)
    add_schedule_routes(app)
    add_openapi_route(app, max_tag_length=64)
    served = {
        (route.method.lower(), re.sub(r"\{[a-z_]+\}", "{}", route.resource.canonical))
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    } - {("get", "/openapi.json")}
    described = document(64)
    named = {
        (method, re.sub(r"\{[A-Za-z]+\}", "{}", path))
        for path, operations in described["paths"].items()
        for method in operations
    }
    assert named == served
    tag = described["components"]["schemas"]["RunRequest"]["properties"]["tag"]
    assert tag["maxLength"] == 64


@pytest.mark.parametrize(
    ("schema", "answer"),
    [
        ("Error", ErrorAnswer),
        ("Accepted", AcceptedAnswer),
        ("Result", RunAnswer),
        ("ListedResult", ListedRun),
        ("RunStatus", RunStatus),
        ("Usage", UsageAnswer),
        ("Schedule", ScheduleAnswer),
        ("GoAccepted", GoAccepted),
        ("GoRequestResult", GoRequestResult),
        ("GoTaggedResult", GoTaggedResult),
        ("GoCheckpoint", GoCheckpoint),
        ("FailedAttempt", AttemptRecord),
    ],
)
def test_each_answer_is_documented_with_the_fields_it_has(schema: str, answer: type) -> None:
    """The documented answers and the TypedDicts the handlers build them as name the
    same fields, and every field the document requires is always there."""
    documented = document(64)["components"]["schemas"][schema]
    assert set(documented["properties"]) == set(answer.__annotations__)
    assert set(documented["required"]) <= answer.__required_keys__  # type: ignore[attr-defined]
