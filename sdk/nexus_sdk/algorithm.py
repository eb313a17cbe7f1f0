"""The algorithm side of the Nexus contract (DESIGN §3), for Python algorithm containers.

A container started by Nexus gets ``--sas-uri=<input url> --request-id=<id>`` and the
``NEXUS__*`` environment. :class:`Run` reads both, fetches the input, and reports the
outcome the way the receiver expects::

    run = Run.from_environment()
    params = run.input()
    run.succeed(compute(params))            # uploads the result, then reports COMPLETED
    # or
    run.fail("BadInput", "x must be positive")  # reports FAILED with cause and message

Only the standard library is used, so an algorithm image needs nothing but Python. Every
call has a timeout; a report that cannot be delivered raises, so the container exits
non-zero and Kubernetes (and then the maintainer) see the failure.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TIMEOUT = 30.0


class ContractError(RuntimeError):
    """The environment is not that of a Nexus run, or a call to Nexus failed."""


def _request(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            data: bytes = response.read()
            return data
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise ContractError(f"{method} {url.split('?')[0]} failed: {exc}") from exc


@dataclass(frozen=True)
class Run:
    """One algorithm run, as its container sees it."""

    algorithm: str
    request_id: str
    input_url: str
    receiver_url: str
    run_token: str
    result_upload_url: str
    parent_request_id: str | None = None

    @classmethod
    def from_environment(
        cls, argv: Sequence[str] | None = None, env: dict[str, str] | None = None
    ) -> Run:
        env = dict(os.environ if env is None else env)
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--sas-uri", required=True)
        parser.add_argument("--request-id", required=True)
        args, _ = parser.parse_known_args(argv)
        try:
            return cls(
                algorithm=env["NEXUS__ALGORITHM_NAME"],
                request_id=args.request_id,
                input_url=args.sas_uri,
                receiver_url=env["NEXUS__RECEIVER_URL"].rstrip("/"),
                run_token=env["NEXUS__RUN_TOKEN"],
                result_upload_url=env["NEXUS__RESULT_UPLOAD_URL"],
                parent_request_id=env.get("NEXUS__PARENT_REQUEST_ID"),
            )
        except KeyError as exc:
            raise ContractError(f"not started by Nexus: {exc.args[0]} is not set") from exc

    def input(self) -> Any:
        """The run's ``algorithmParameters``."""
        return json.loads(_request("GET", self.input_url, None, {}))

    def succeed(self, result: Any, content_type: str = "application/json") -> None:
        """Upload ``result`` (JSON-serialisable, or bytes) and report success."""
        body = result if isinstance(result, bytes) else json.dumps(result).encode()
        _request("PUT", self.result_upload_url, body, {"Content-Type": content_type})
        self._report({"cause": None, "message": None, "sasUri": None})

    def fail(self, cause: str, message: str) -> None:
        """Report that the run failed, with a short cause and a longer message."""
        self._report({"cause": cause, "message": message, "sasUri": None})

    def _report(self, body: dict[str, Any]) -> None:
        route = f"/algorithm/v1.2/complete/{self.algorithm}/requests/{self.request_id}"
        url = self.receiver_url + route
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.run_token}"}
        _request("POST", url, json.dumps(body).encode(), headers)
