"""``GET /openapi.json``: the OpenAPI 3 description of the scheduler's API v1.2 (and of
the Go Nexus v1 routes, from :mod:`nexus.scheduler.goopenapi`).

Written out by hand rather than generated, because it is a contract with existing clients:
a change here is a change of the wire format and should be reviewed as one.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from nexus.core.checkpoints import MAX_TAG_RESULTS
from nexus.core.httpapi import json_errors
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


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _query(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": True, "schema": {"type": kind}}


_COMMON = {
    "401": _error("No valid bearer token"),
    "403": _error("The caller may not run this algorithm"),
    "400": _error("Invalid input; the message names the field"),
    "503": _error("A dependency is unavailable; retry after Retry-After"),
}

_STATUSES = [
    "NEW", "BUFFERED", "RUNNING", "COMPLETED", "FAILED", "SCHEDULING_FAILED",
    "DEADLINE_EXCEEDED", "CANCELLED",
]  # fmt: skip

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
                "required": ["algorithmParameters"],
                "properties": {
                    "algorithmParameters": {"type": "object", "additionalProperties": True},
                    "algorithmName": {"type": "string", "nullable": True},
                    "customConfiguration": {
                        "type": "object",
                        "nullable": True,
                        "additionalProperties": False,
                        "properties": {
                            "image": {"type": "string"},
                            "imageRepository": {"type": "string"},
                            "registry": {"type": "string"},
                            "versionTag": {"type": "string"},
                            "imageTag": {"type": "string"},
                            "version": {"type": "string"},
                            "cpuLimit": {"type": "string"},
                            "memoryLimit": {"type": "string"},
                            "workgroup": {"type": "string"},
                            "deadlineSeconds": {"type": "integer", "minimum": 1},
                            "maximumRetries": {"type": "integer", "minimum": 0},
                            "customResources": {
                                "type": "object",
                                "additionalProperties": {
                                    "oneOf": [
                                        {"type": "string"},
                                        {"type": "integer", "minimum": 0},
                                    ]
                                },
                            },
                        },
                    },
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
                    "status": {"type": "string", "enum": _STATUSES},
                    "resultUri": {"type": "string", "nullable": True},
                    "runErrorMessage": {"type": "string", "nullable": True},
                },
            },
            "Results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
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
                    "404": _error("Unknown algorithm"),
                    "409": _error("The Idempotency-Key names a run of another algorithm"),
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
                "summary": "A run's status and result",
                "parameters": [_ALG, _ID],
                "responses": {
                    "200": _json("Result", "The run"),
                    **_COMMON,
                    "404": _error("Unknown run"),
                },
            }
        },
        "/algorithm/v1.2/results/{algorithmName}/tags/{tag}": {
            "get": {
                "summary": "Runs carrying a tag",
                "parameters": [
                    _ALG,
                    {"name": "tag", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json("Results", f"The runs, newest first: at most {MAX_TAG_RESULTS}"),
                    **_COMMON,
                },
            }
        },
        "/algorithm/v1.2/metadata/{algorithmName}/requests/{requestId}": {
            "get": {
                "summary": "A run's whole checkpoint, with its queue position while queued",
                "parameters": [_ALG, _ID],
                "responses": {
                    "200": _json("Checkpoint", "The checkpoint"),
                    **_COMMON,
                    "404": _error("Unknown run"),
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
                    "404": _error("Unknown run"),
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
                    "404": _error("Unknown run"),
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
