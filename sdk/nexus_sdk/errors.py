"""What can go wrong when talking to Nexus: one exception per kind of failure.

Every exception the SDK raises on purpose derives from :class:`NexusError`, so a caller can
catch them all at once, or one kind alone::

    NexusError
    ├── ConnectionFailed      no answer from the server, still after the retries
    ├── ApiError              the server answered with an error: .status, .code, .message
    │   ├── Unauthorized      401: no valid credential
    │   ├── Forbidden         403: a valid credential that may not do this
    │   ├── NotFound          404: no such run (or none the caller may see), or no such route
    │   ├── Refused           400, 409, 413, 415, 422…: the request itself is refused;
    │   │   │                 .message is the server's, naming the problem
    │   │   └── Conflict      409: the run's state (finished) or an idempotency key forbids it
    │   ├── Throttled         429 or 503 still after the retries; .retry_after
    │   └── ServerError       any other 5xx
    ├── RunFailed             a run whose result was asked for ended without one; .run
    ├── WaitTimeout           a wait ran out of time (also a TimeoutError)
    └── ContractError         an algorithm container: not started by Nexus, or a report
                              that could not be delivered

The HTTP library's own errors never escape: each is chained as the ``__cause__`` of the
exception raised in its place (``raise … from exc``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nexus_sdk.models import RunState


class NexusError(Exception):
    """Anything the SDK reports as a failure."""


class ConnectionFailed(NexusError):
    """The server could not be reached, or the connection broke, still after the retries."""


class ApiError(NexusError):
    """The server answered with an error status and (usually) ``{"error", "message"}``."""

    def __init__(self, status: int, code: str, message: str, *, method: str = "", url: str = ""):
        self.status = status
        self.code = code
        """The machine-readable ``error`` of the answer (``not_found``, ``invalid_request``…)."""
        self.message = message
        """The server's words: what is wrong, naming the field when input is."""
        self.method = method
        self.url = url
        where = f" ({method} {url})" if method else ""
        super().__init__(f"{status} {code}: {message}{where}")


class Unauthorized(ApiError):
    """401: the request carried no valid credential (``NEXUS_TOKEN``)."""


class Forbidden(ApiError):
    """403: the credential is valid but may not do this (run this algorithm, say)."""


class NotFound(ApiError):
    """404: no such run, none the caller may see, or a route the server does not have."""

    @property
    def no_route(self) -> bool:
        """The server has no such route (an older server), rather than no such run."""
        return self.message == "no such route" or self.code != "not_found"


class Refused(ApiError):
    """The request itself was refused (bad input, too large, a conflict); see ``message``."""


class Conflict(Refused):
    """409: the run's state forbids it (it has finished), or the idempotency key is in use."""


class Throttled(ApiError):
    """429 or 503: the server is overloaded or a store is down, still after the retries."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        method: str = "",
        url: str = "",
    ):
        super().__init__(status, code, message, method=method, url=url)
        self.retry_after = retry_after
        """The server's last ``Retry-After`` in seconds, when it gave one."""


class ServerError(ApiError):
    """A 5xx other than 503: a fault of the server."""


class RunFailed(NexusError):
    """The run ended without a result (failed, cancelled, timed out…)."""

    def __init__(self, algorithm: str, run: RunState) -> None:
        self.algorithm = algorithm
        self.run = run
        why = f": {run.error_message}" if run.error_message else ""
        of = f" of {algorithm}" if algorithm else ""
        super().__init__(f"run {run.request_id}{of} is {run.status}{why}")


class WaitTimeout(NexusError, TimeoutError):
    """A wait for a run or a batch ran out of time; the run may still finish later."""


class ContractError(NexusError):
    """An algorithm container: the environment is not that of a Nexus run, or a report to
    Nexus could not be delivered within the retry budget."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The status of the last answer, when there was one."""


def error_for(
    status: int,
    code: str,
    message: str,
    *,
    retry_after: float | None = None,
    method: str = "",
    url: str = "",
) -> ApiError:
    """The exception of an error answer with this status."""
    kind: type[ApiError]
    if status in (429, 503):
        return Throttled(status, code, message, retry_after=retry_after, method=method, url=url)
    if status == 401:
        kind = Unauthorized
    elif status == 403:
        kind = Forbidden
    elif status == 404:
        kind = NotFound
    elif status == 409:
        kind = Conflict
    elif 400 <= status < 500:
        kind = Refused
    else:
        kind = ServerError
    return kind(status, code, message, method=method, url=url)
