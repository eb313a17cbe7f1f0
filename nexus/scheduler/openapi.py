"""``GET /openapi.json``: the OpenAPI 3 description of the scheduler's API v1.2 (and of
the Go Nexus v1 routes, from :mod:`nexus.scheduler.goopenapi`).

Written out by hand rather than generated, because it is a contract with existing clients:
a change here is a change of the wire format and should be reviewed as one.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from nexus.core.compatibility import V12_STATUSES
from nexus.core.httpapi import json_errors
from nexus.core.overrides import MAX_SPECULATIVE_ATTEMPTS
from nexus.core.retrying import FAILURE_CLASSES
from nexus.scheduler import goopenapi

_ID = {
    "name": "requestId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_ALG = {
    "name": "algorithmName",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


# A caller sees only its own runs unless its credential grants more (nexus.core.visibility):
# another caller's run is answered exactly as a run that does not exist.
_UNSEEN = _error("No such run among those the caller may see (its own, or granted)")


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _query(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": True, "schema": {"type": kind}}


def _optional_query(name: str, kind: str, description: str) -> dict[str, Any]:
    schema = {"type": kind}
    return {"name": name, "in": "query", "description": description, "schema": schema}


_WAIT = _optional_query(
    "wait", "number", "Seconds (0 to 60) to wait for the end before answering as it stands"
)
_TAG = {"name": "tag", "in": "path", "required": True, "schema": {"type": "string"}}

_COMMON = {
    "401": _error("No valid bearer token"),
    "403": _error("The caller may not run this algorithm"),
    "400": _error("Invalid input; the message names the field"),
    "503": _error("A dependency is unavailable; retry after Retry-After"),
}

_STATUSES = list(V12_STATUSES)
_NULL_ABSENT = (
    " Every field may be null, which means absent, and names are read in any letter case"
    " (the .NET client sends PascalCase)."
)
_ENTRY = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "value": {"type": "string", "nullable": True},
        "valueType": {
            "type": "string",
            "nullable": True,
            "enum": ["PLAIN", "RELATIVE_REFERENCE"],
            "description": "PLAIN (the default): the value as given. RELATIVE_REFERENCE: a"
            " relative path in the template's mounted configuration"
            " (runtimeEnvironment.configuration), given to the container as its absolute"
            " path; refused (400) when the template mounts none.",
        },
    },
}
_CUSTOM_CONFIGURATION = {
    "type": "object",
    "nullable": True,
    "additionalProperties": False,
    "description": "Overrides of the algorithm's template for this run (the whole v1.2"
    " customConfiguration). Each field takes effect on the run's Job, or is refused with a"
    " 400 that names it and says why." + _NULL_ABSENT,
    "properties": {
        "image": {"type": "string", "nullable": True, "description": "The container image."},
        "imageRepository": {"type": "string", "nullable": True, "description": "= image"},
        "registry": {"type": "string", "nullable": True, "description": "Image registry."},
        "imageRegistry": {"type": "string", "nullable": True, "description": "= registry"},
        "versionTag": {"type": "string", "nullable": True, "description": "The image tag."},
        "imageTag": {"type": "string", "nullable": True, "description": "= versionTag"},
        "version": {"type": "string", "nullable": True, "description": "= versionTag"},
        "cpuLimit": {"type": "string", "nullable": True, "description": "Limit and request."},
        "memoryLimit": {"type": "string", "nullable": True, "description": "Limit and request."},
        "workgroup": {"type": "string", "nullable": True, "description": "Places the run."},
        "deadlineSeconds": {
            "type": "integer",
            "nullable": True,
            "minimum": 1,
            "description": "The Job's activeDeadlineSeconds.",
        },
        "maximumRetries": {
            "type": "integer",
            "nullable": True,
            "minimum": 0,
            "description": "The Job's backoffLimit.",
        },
        "customResources": {
            "type": "object",
            "nullable": True,
            "description": "More container limits, e.g. nvidia.com/gpu or ephemeral-storage.",
            "additionalProperties": {
                "oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]
            },
        },
        "env": {
            "type": "array",
            "nullable": True,
            "maxItems": 100,
            "items": _ENTRY,
            "description": "Environment variables of the container, over the template's."
            " Those Nexus sets for every run (NEXUS__REQUEST_ID, NEXUS__RUN_TOKEN, …) are"
            " refused.",
        },
        "args": {
            "type": "array",
            "nullable": True,
            "maxItems": 100,
            "items": _ENTRY,
            "description": "Arguments after the template's, each as --name=value;"
            " sas-uri and request-id are Nexus' own and refused.",
        },
        "secrets": {
            "type": "array",
            "nullable": True,
            "maxItems": 100,
            "items": {"type": "string"},
            "description": "Secrets whose keys become environment variables (envFrom),"
            " only those the template lists in runtimeEnvironment.allowedSecrets: any"
            " other is refused with 403 naming it.",
        },
        "speculativeAttempts": {
            "type": "integer",
            "nullable": True,
            "minimum": 0,
            "maximum": MAX_SPECULATIVE_ATTEMPTS,
            "description": "Copies of the run started at once (0 and 1: one). The first"
            " copy to report decides the run; the others are deleted.",
        },
        "additionalWorkgroups": {
            "type": "object",
            "nullable": True,
            "maxProperties": 0,
            "description": "Refused unless empty (400): a run is placed on exactly one"
            " workgroup, chosen with workgroup.",
        },
        "monitoringParameters": {
            "type": "array",
            "nullable": True,
            "maxItems": 0,
            "items": {"type": "string"},
            "description": "Refused unless empty (400): monitoring is not configured per"
            " run; every run's metrics are at GET /metrics.",
        },
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Nexus scheduler",
        "version": "1.2",
        "description": "Submit algorithm runs, follow them, fetch their results.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            },
            "RunRequest": {
                "type": "object",
                "description": "A run request." + _NULL_ABSENT,
                "required": ["algorithmParameters"],
                "properties": {
                    "algorithmParameters": {"type": "object", "additionalProperties": True},
                    "algorithmName": {"type": "string", "nullable": True},
                    "customConfiguration": {"$ref": "#/components/schemas/CustomConfiguration"},
                    "parentRequest": {
                        "type": "object",
                        "nullable": True,
                        "required": ["requestId", "algorithmName"],
                        "properties": {
                            "requestId": {"type": "string", "format": "uuid"},
                            "algorithmName": {"type": "string"},
                        },
                    },
                    "tag": {"type": "string", "nullable": True, "maxLength": 128},  # see document()
                    "payloadValidFor": {"type": "string", "nullable": True, "example": "24h"},
                },
            },
            "CustomConfiguration": _CUSTOM_CONFIGURATION,
            "Accepted": {
                "type": "object",
                "required": ["requestId"],
                "properties": {"requestId": {"type": "string", "format": "uuid"}},
            },
            "Result": {
                "type": "object",
                "required": ["requestId", "status"],
                "properties": {
                    "requestId": {"type": "string", "format": "uuid"},
                    "status": {
                        "type": "string",
                        "enum": _STATUSES,
                        "description": "The v1.2 vocabulary: a run that could not be"
                        " scheduled is SCHEDULING_TIMEOUT, why in runErrorMessage.",
                    },
                    "resultUri": {"type": "string", "nullable": True},
                    "runErrorMessage": {"type": "string", "nullable": True},
                },
            },
            "ListedResult": {
                "type": "object",
                "required": ["requestId", "status"],
                "properties": {
                    "requestId": {"type": "string", "format": "uuid"},
                    "status": {"type": "string", "enum": _STATUSES},
                    "resultUri": {"type": "string", "nullable": True},
                    "runErrorMessage": {"type": "string", "nullable": True},
                    "result": {
                        "description": "The result document itself, when it is kept inline:"
                        " only in a listing asked for with ?include=result",
                    },
                },
            },
            "Results": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/ListedResult"},
            },
            "BulkRuns": {
                "type": "object",
                "required": ["runs"],
                "properties": {
                    "runs": {
                        "type": "array",
                        "maxItems": 1000,
                        "items": {
                            "allOf": [{"$ref": "#/components/schemas/RunRequest"}],
                            "description": "A run request, with an optional idempotencyKey",
                        },
                    }
                },
            },
            "BulkAnswer": {
                "type": "object",
                "required": ["runs"],
                "properties": {
                    "runs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "requestId": {"type": "string", "format": "uuid"},
                                "error": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    }
                },
            },
            "TagSummary": {
                "type": "object",
                "required": ["total", "byStatus", "finished"],
                "properties": {
                    "total": {"type": "integer"},
                    "byStatus": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                        "description": "Runs by v1.2 status; every status named, 0 when none",
                    },
                    "finished": {
                        "type": "boolean",
                        "description": "The tag has runs and every one is terminal",
                    },
                },
            },
            "RunStatus": {
                "type": "object",
                "required": ["requestId", "status"],
                "properties": {
                    "requestId": {"type": "string", "format": "uuid"},
                    "status": {"type": "string", "enum": _STATUSES},
                },
            },
            "Schedule": {
                "type": "object",
                "required": [
                    "name",
                    "schedule",
                    "timeZone",
                    "algorithm",
                    "caller",
                    "concurrencyPolicy",
                    "missedRunPolicy",
                    "lastTick",
                    "lastRequestId",
                    "lastOutcome",
                    "nextTick",
                ],
                "properties": {
                    "name": {"type": "string"},
                    "schedule": {"type": "string", "example": "0 9 * * 1-5"},
                    "timeZone": {"type": "string", "example": "Europe/Amsterdam"},
                    "algorithm": {"type": "string"},
                    "caller": {"type": "string"},
                    "concurrencyPolicy": {"type": "string", "enum": ["Allow", "Forbid", "Replace"]},
                    "missedRunPolicy": {"type": "string", "enum": ["RunOnce", "RunAll", "Skip"]},
                    "lastTick": {"type": "string", "format": "date-time", "nullable": True},
                    "lastRequestId": {"type": "string", "format": "uuid", "nullable": True},
                    "lastOutcome": {
                        "type": "string",
                        "nullable": True,
                        "description": "started, skipped: <why> or refused: <status> <message>",
                    },
                    "nextTick": {"type": "string", "format": "date-time", "nullable": True},
                },
            },
            "Usage": {
                "type": "object",
                "required": [
                    "caller",
                    "runsToday",
                    "runsPerDay",
                    "resetsAt",
                    "unfinishedRuns",
                    "maxUnfinished",
                    "running",
                    "maxRunning",
                    "weight",
                ],
                "properties": {
                    "caller": {"type": "string"},
                    "runsToday": {
                        "type": "integer",
                        "nullable": True,
                        "description": "Runs submitted this UTC day (counted under a daily quota)",
                    },
                    "runsPerDay": {"type": "integer", "nullable": True},
                    "resetsAt": {"type": "string", "format": "date-time"},
                    "unfinishedRuns": {"type": "integer"},
                    "maxUnfinished": {"type": "integer", "nullable": True},
                    "running": {"type": "integer"},
                    "maxRunning": {"type": "integer", "nullable": True},
                    "weight": {"type": "number", "nullable": True},
                },
            },
            "Checkpoint": {
                "type": "object",
                "additionalProperties": True,
                "properties": {
                    "attempt": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "The current attempt: 1, or more once the run was"
                        " retried by its template's retryPolicy (its Job is <requestId> for"
                        " the first attempt, <requestId>-a<n> after)",
                    },
                    "retries": {
                        "type": "array",
                        "description": "The attempts that failed and were retried, oldest first",
                        "items": {"$ref": "#/components/schemas/FailedAttempt"},
                    },
                    "retryAt": {
                        "type": "string",
                        "format": "date-time",
                        "nullable": True,
                        "description": "When the current attempt may start, while a retry"
                        " waits for its policy's delay",
                    },
                    "waitingFor": {
                        "description": "While the run waits for a full concurrency limit",
                        "type": "object",
                        "properties": {
                            "limit": {
                                "type": "string",
                                "example": "algorithm/echo",
                                "description": "algorithm/<name>, workgroup/<name> or"
                                " caller/<name>",
                            },
                            "maxRunning": {"type": "integer", "nullable": True},
                            "running": {"type": "integer"},
                            "position": {"type": "integer", "description": "0: next"},
                        },
                    },
                },
            },
            "FailedAttempt": {
                "type": "object",
                "required": ["attempt", "job", "failureClass", "cause", "details", "endedAt"],
                "properties": {
                    "attempt": {"type": "integer"},
                    "job": {"type": "string", "description": "The attempt's Job"},
                    "failureClass": {
                        "type": "string",
                        "enum": list(FAILURE_CLASSES),
                        "description": "outOfMemory (OOMKilled), schedulingFailure (image"
                        " pull failing, pod unschedulable), nodeLost (pod evicted, node"
                        " gone) or algorithmFailure (a completion with a cause)",
                    },
                    "cause": {"type": "string", "example": "OOMKilled"},
                    "details": {"type": "string"},
                    "endedAt": {"type": "string", "format": "date-time"},
                    "memoryLimit": {
                        "type": "string",
                        "description": "The attempt's memory limit, when the next had more",
                    },
                    "retryAt": {
                        "type": "string",
                        "format": "date-time",
                        "description": "When the next attempt was due, when it waited",
                    },
                },
            },
            "Cancellation": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string"},
                    "initiator": {"type": "string"},
                    "cancellationPolicy": {
                        "type": "string",
                        "enum": ["Background", "Foreground", "Orphan"],
                    },
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/algorithm/v1.2/run/{algorithmName}": {
            "post": {
                "summary": "Submit a run",
                "parameters": [
                    _ALG,
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/RunRequest"}}
                    },
                },
                "responses": {
                    "202": _json("Accepted", "Accepted; the run is durable"),
                    **_COMMON,
                    "403": _error(
                        "The caller may not run this algorithm, or customConfiguration.secrets"
                        " names a Secret the template does not allow (the message names it)"
                    ),
                    "404": _error("Unknown algorithm"),
                    "409": _error(
                        "A request with this Idempotency-Key is still being accepted;"
                        " send again after Retry-After"
                    ),
                    "422": _error(
                        "The Idempotency-Key names a run asked for with another body"
                        " (the message names the fields that differ)"
                    ),
                    "413": _error("Body too large"),
                    "415": _error("A Content-Encoding other than gzip, deflate, br or zstd"),
                    "429": _error(
                        "Queue full, or the caller's quota used up (runs per day, runs not yet"
                        " finished; the message says which); retry after Retry-After"
                    ),
                },
            }
        },
        "/algorithm/v1.2/schedules": {
            "get": {
                "summary": "The NexusSchedules, with their last and next ticks",
                "responses": {
                    "200": {
                        "description": "Every schedule, by name",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Schedule"},
                                }
                            }
                        },
                    },
                    "401": _COMMON["401"],
                    "503": _COMMON["503"],
                },
            }
        },
        "/algorithm/v1.2/usage": {
            "get": {
                "summary": "What the caller has used of its quotas and concurrency limit",
                "responses": {
                    "200": _json("Usage", "The caller's usage"),
                    "401": _COMMON["401"],
                    "503": _COMMON["503"],
                },
            }
        },
        "/algorithm/v1.2/results/{algorithmName}/requests/{requestId}": {
            "get": {
                "summary": "A run's status and result; with ?wait=S, answered once the run is"
                " finished or after S seconds",
                "parameters": [_ALG, _ID, _WAIT],
                "responses": {
                    "200": _json("Result", "The run"),
                    **_COMMON,
                    "404": _UNSEEN,
                },
            }
        },
        "/algorithm/v1.2/results/{algorithmName}/tags/{tag}": {
            "get": {
                "summary": "The caller's runs carrying a tag (tags are per caller), every one,"
                " oldest first; streamed whole, or in pages with ?limit (Link rel=next)",
                "parameters": [
                    _ALG,
                    _TAG,
                    _optional_query("limit", "integer", "Runs per page, 1 to 10000"),
                    _optional_query("after", "string", "The cursor of a Link rel=next"),
                    _optional_query(
                        "include",
                        "string",
                        "result: each run with its result, when kept inline (at most 100"
                        " runs a page then, whatever the limit)",
                    ),
                ],
                "responses": {
                    "200": _json("Results", "The runs (all of them, or one page)"),
                    **_COMMON,
                },
            }
        },
        "/algorithm/v1.2/runs/{algorithmName}": {
            "post": {
                "summary": "Bulk submit: up to 1000 runs, each judged alone, answered in order",
                "parameters": [_ALG],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/BulkRuns"}}
                    },
                },
                "responses": {
                    "200": _json("BulkAnswer", "Each run's requestId, or its error"),
                    **_COMMON,
                    "413": _error("More than 1000 runs, or a body too large"),
                    "429": _error("Too many runs are waiting; retry after Retry-After"),
                },
            }
        },
        "/algorithm/v1.2/results/{algorithmName}/tags/{tag}/summary": {
            "get": {
                "summary": "How many runs of a tag are in each status, and whether all finished;"
                " with ?wait=S, answered once all finished or after S seconds",
                "parameters": [_ALG, _TAG, _WAIT],
                "responses": {"200": _json("TagSummary", "The batch's progress"), **_COMMON},
            }
        },
        "/algorithm/v1.2/metadata/{algorithmName}/requests/{requestId}": {
            "get": {
                "summary": "A run's whole checkpoint, with its queue position while queued",
                "parameters": [_ALG, _ID],
                "responses": {
                    "200": _json("Checkpoint", "The checkpoint"),
                    **_COMMON,
                    "404": _UNSEEN,
                },
            }
        },
        "/algorithm/v1.2/payload/{algorithmName}/requests/{requestId}": {
            "get": {
                "summary": "Redirect to a fresh URL of the run's input",
                "parameters": [_ALG, _ID],
                "responses": {
                    "302": {"description": "Location holds the input URL"},
                    **_COMMON,
                    "404": _UNSEEN,
                },
            }
        },
        "/algorithm/v1.2/cancel/{algorithmName}/requests/{requestId}": {
            "post": {
                "summary": "Cancel a run",
                "parameters": [_ALG, _ID],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/Cancellation"}
                        }
                    }
                },
                "responses": {
                    "200": _json("RunStatus", "Cancelled"),
                    **_COMMON,
                    "404": _UNSEEN,
                    "409": _error("The run has already finished"),
                    "413": _error("Body too large"),
                    "415": _error("A Content-Encoding other than gzip, deflate, br or zstd"),
                },
            }
        },
        "/algorithm/v1.2/payload/{algorithmName}/requests/{requestId}/content": {
            "get": {
                "summary": "A run's input kept inline, for the holder of its signed link",
                "security": [],
                "parameters": [
                    _ALG,
                    _ID,
                    _query("expires", "integer"),
                    _query("signature", "string"),
                ],
                "responses": {
                    "200": {"description": "The input, as JSON"},
                    "403": _error("The link is malformed, altered or expired"),
                    "404": _error("Unknown run, or its input is not kept inline"),
                    "503": _error("A dependency is unavailable; retry after Retry-After"),
                },
            }
        },
        "/algorithm/v1.2/results/{algorithmName}/requests/{requestId}/content": {
            "get": {
                "summary": "A run's result kept inline (a small result), for the holder of its"
                " signed link (the resultUri)",
                "security": [],
                "parameters": [
                    _ALG,
                    _ID,
                    _query("expires", "integer"),
                    _query("signature", "string"),
                ],
                "responses": {
                    "200": {"description": "The result document, as JSON"},
                    "403": _error("The link is malformed, altered or expired"),
                    "404": _error("Unknown run, or its result is not kept inline"),
                    "503": _error("A dependency is unavailable; retry after Retry-After"),
                },
            }
        },
        "/health/live": {
            "get": {"security": [], "responses": {"200": {"description": "The process runs"}}}
        },
        "/health/ready": {
            "get": {
                "security": [],
                "responses": {
                    "200": {"description": "Ready for traffic"},
                    "503": _error("Starting or stopping"),
                },
            }
        },
        "/metrics": {
            "get": {
                "security": [],
                "responses": {"200": {"description": "Prometheus text exposition"}},
            }
        },
    },
}


def document(max_tag_length: int) -> dict[str, Any]:
    """:data:`DOCUMENT` with this deployment's limits."""
    copy: dict[str, Any] = orjson.loads(orjson.dumps(DOCUMENT))
    copy["components"]["schemas"]["RunRequest"]["properties"]["tag"]["maxLength"] = max_tag_length
    copy["paths"].update(orjson.loads(orjson.dumps(goopenapi.PATHS)))
    copy["components"]["schemas"].update(orjson.loads(orjson.dumps(goopenapi.SCHEMAS)))
    return copy


def add_openapi_route(app: web.Application, max_tag_length: int) -> None:
    body = orjson.dumps(document(max_tag_length))

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/openapi.json", json_errors(openapi))
