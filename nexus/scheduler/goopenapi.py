"""The OpenAPI description of the Go Nexus API v1 routes (:mod:`nexus.scheduler.goapi`).

Merged into ``GET /openapi.json`` beside v1.2. Written by hand, as v1.2's is: it is the
wire contract of clients generated from the Go scheduler's own description, and a change
here is a change of that contract.
"""

from __future__ import annotations

from typing import Any

_ID = {"name": "requestId", "in": "path", "required": True, "schema": {"type": "string"}}
_ALG = {"name": "algorithmName", "in": "path", "required": True, "schema": {"type": "string"}}
_STR = {"type": "string"}
_ERROR = {
    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}},
    "text/plain": {"schema": _STR},
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": f"{description} (text/plain when the client accepts only that)",
        "content": _ERROR,
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_COMMON = {
    "400": _error("Invalid input; the message names the field"),
    "401": _error("No valid bearer token"),
    "403": _error("The caller may not run this algorithm"),
    "503": _error("A dependency is unavailable; retry after Retry-After"),
}
_READ = {**_COMMON, "404": _error("Unknown run")}
_TAGS = ["v1 (Go Nexus)"]
_OMITTED = ("tag", "job_uid")
"""Left out when there is none, as Go's ``omitempty`` leaves them out."""
_CHECKPOINT_STRINGS = (
    "algorithm", "id", "lifecycle_stage", "payload_uri", "result_uri",
    "algorithm_failure_cause", "algorithm_failure_details", "received_by_host",
    "received_at", "sent_at", "content_hash", "last_modified", "tag", "api_version",
    "job_uid", "payload_valid_for",
)  # fmt: skip

SCHEMAS: dict[str, Any] = {
    "GoAlgorithmSpec": {
        "type": "object",
        "description": "A NexusAlgorithmSpec. As a run's customConfiguration: container"
        " (image, registry, versionTag), computeResources (cpuLimit, memoryLimit,"
        " customResources), workgroupRef (name), runtimeEnvironment (deadlineSeconds,"
        " maximumRetries, environmentVariables with values, mappedEnvironmentVariables of"
        " Secrets the template allows) and payloadConfiguration.payloadValidFor take effect;"
        " null, empty"
        " strings, lists and objects are absent; any other field set is refused with a 400"
        " naming it.",
        "additionalProperties": True,
        "properties": {
            "container": {"type": "object", "nullable": True},
            "computeResources": {"type": "object", "nullable": True},
            "workgroupRef": {"type": "object", "nullable": True},
            "command": {"type": "string", "nullable": True},
            "args": {"type": "array", "nullable": True, "items": _STR},
            "payloadConfiguration": {"type": "object", "nullable": True},
            "runtimeEnvironment": {"type": "object", "nullable": True},
            "errorHandlingBehaviour": {"type": "object", "nullable": True},
            "datadogIntegrationSettings": {"type": "object", "nullable": True},
        },
    },
    "GoAlgorithmRequest": {
        "type": "object",
        "required": ["algorithmParameters"],
        "properties": {
            "algorithmParameters": {"type": "object", "additionalProperties": True},
            "customConfiguration": {**_ref("GoAlgorithmSpec"), "nullable": True},
            "requestApiVersion": {"type": "string", "nullable": True},
            "tag": {"type": "string", "nullable": True},
            "parentRequest": {
                "type": "object",
                "nullable": True,
                "required": ["requestId", "algorithmName"],
                "properties": {"requestId": _STR, "algorithmName": _STR},
            },
            "payloadValidFor": {"type": "string", "nullable": True, "example": "24h"},
        },
    },
    "GoAccepted": {
        "type": "object",
        "required": ["requestId"],
        "properties": {
            "requestId": _STR,
            "job": {
                "type": "string",
                "description": "Dry runs only: the Job that would be created, as JSON text",
            },
        },
    },
    "GoRequestResult": {
        "type": "object",
        "required": ["requestId", "status", "resultUri", "runErrorMessage"],
        "properties": {
            "requestId": _STR,
            "status": _STR,
            "resultUri": {"type": "string", "description": "'' unless COMPLETED"},
            "runErrorMessage": {"type": "string", "description": "'' unless it failed"},
        },
    },
    "GoTaggedResult": {
        "type": "object",
        "required": ["requestId", "algorithmName", "status", "resultUri", "runErrorMessage"],
        "properties": {
            "requestId": _STR,
            "algorithmName": _STR,
            "status": _STR,
            "resultUri": _STR,
            "runErrorMessage": _STR,
        },
    },
    "GoCheckpoint": {
        "type": "object",
        "required": [
            n for n in (*_CHECKPOINT_STRINGS, "applied_configuration") if n not in _OMITTED
        ],
        "properties": {
            **{name: _STR for name in _CHECKPOINT_STRINGS},
            "applied_configuration": _ref("GoAlgorithmSpec"),
            "configuration_overrides": _ref("GoAlgorithmSpec"),
            "parent": {
                "type": "object",
                "properties": {"requestId": _STR, "algorithmName": _STR},
            },
        },
    },
}

PATHS: dict[str, Any] = {
    "/algorithm/v1/run/{algorithmName}": {
        "post": {
            "tags": _TAGS,
            "summary": "Submit a run (Go Nexus v1); with dryRun=true, only validate it",
            "parameters": [
                _ALG,
                {
                    "name": "dryRun",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["true", "false"]},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("GoAlgorithmRequest")}},
            },
            "responses": {
                "202": _json(
                    _ref("GoAccepted"),
                    "Accepted and durable; a dry run: valid, with the Job, nothing stored",
                ),
                **_COMMON,
                "413": _error("Body too large"),
                "429": _error("A quota or the queue is full; retry after Retry-After"),
            },
        }
    },
    "/algorithm/v1/results/{algorithmName}/requests/{requestId}": {
        "get": {
            "tags": _TAGS,
            "summary": "How a run stands",
            "parameters": [_ALG, _ID],
            "responses": {"200": _json(_ref("GoRequestResult"), "The run"), **_READ},
        }
    },
    "/algorithm/v1/results/tags/{requestTag}": {
        "get": {
            "tags": _TAGS,
            "summary": "Every run carrying a tag, of the algorithms the caller may run",
            "parameters": [{"name": "requestTag", "in": "path", "required": True, "schema": _STR}],
            "responses": {
                "200": _json({"type": "array", "items": _ref("GoTaggedResult")}, "The runs"),
                **_COMMON,
            },
        }
    },
    "/algorithm/v1/metadata/{algorithmName}/requests/{requestId}": {
        "get": {
            "tags": _TAGS,
            "summary": "A run's checkpoint, under the Go field names",
            "parameters": [_ALG, _ID],
            "responses": {"200": _json(_ref("GoCheckpoint"), "The checkpoint"), **_READ},
        }
    },
    "/algorithm/v1/payload/{algorithmName}/requests/{requestId}": {
        "get": {
            "tags": _TAGS,
            "summary": "Redirect to a fresh URL of the run's input",
            "parameters": [_ALG, _ID],
            "responses": {"302": {"description": "Location: the input"}, **_READ},
        }
    },
    "/algorithm/v1/buffer/{algorithmName}/requests/{requestId}": {
        "get": {
            "tags": _TAGS,
            "summary": "The run's Kubernetes Job, as JSON text (token and upload URL withheld)",
            "parameters": [_ALG, _ID],
            "responses": {
                "200": {"description": "The Job", "content": {"text/plain": {"schema": _STR}}},
                **_READ,
            },
        }
    },
    "/algorithm/v1/cancel/{algorithmName}/requests/{requestId}": {
        "post": {
            "tags": _TAGS,
            "summary": "Cancel a run; a finished run stays as it was (409)",
            "parameters": [_ALG, _ID],
            "requestBody": {
                "content": {"application/json": {"schema": _ref("Cancellation")}},
            },
            "responses": {
                "200": {
                    "description": "Cancelled (an empty text/plain body, as Go answers)",
                    "content": {"text/plain": {"schema": _STR}},
                },
                **_READ,
                "409": _error("The run has already finished"),
            },
        }
    },
}
