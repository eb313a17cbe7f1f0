"""Simulated containers: the algorithm contract of DESIGN §3 played without a process.

A simulated pod reads what a real algorithm container would — ``--sas-uri=<url>`` and
``--request-id=<id>`` in its args, ``NEXUS__RECEIVER_URL``, ``NEXUS__RUN_TOKEN``,
``NEXUS__RESULT_UPLOAD_URL``, ``NEXUS__ALGORITHM_NAME``, ``NEXUS__REQUEST_ID`` in its env —
and after a duration drawn from the shard's distribution:

1. read the input from ``NEXUS__INPUT`` when the Job carries it, else ``GET`` the input
   URL (if given);
2. make its result: the input itself when it is JSON, else ``{"requestId": ..., "ok": true}``;
3. ``POST {"cause": null, "message": null, "sasUri": null, "result": <result>}`` to
   ``{NEXUS__RECEIVER_URL}/algorithm/v1.2/complete/{algorithm}/requests/{id}`` with
   ``Authorization: Bearer {NEXUS__RUN_TOKEN}`` (if a receiver is given): a small result
   (at most ``NEXUS__RESULT_INLINE_LIMIT`` bytes) travels inline, as the algorithm SDK
   sends it.
   A larger one, or one the receiver refuses as too large (413), is ``PUT`` to
   ``NEXUS__RESULT_UPLOAD_URL`` first and the completion carries no ``result``;
4. exits 0.

A step that fails in a way that may pass — no answer (connection refused or reset, a
timeout), ``408``, ``425``, ``429`` or a ``5xx`` — is tried again, as the algorithm SDK
does: after a back-off doubling from ``retry_first`` to ``retry_cap`` seconds, or after the
answer's ``Retry-After`` when it names one (never past the cap), for up to ``retry_for``
seconds from the step's first failure. So a receiver restarting, an object store or a
checkpoint store away for a while, costs a run time, not its outcome. Another ``4xx``, or a
step still failing when its time is up, ends the container with exit code 1 and a log line
saying why, as a real container would — except a completion that could not be delivered
when the result can be uploaded: the result is then (or was already) at its default
location, the container exits 0 without reporting, and the maintainer finds the result
there and completes the run. An input that is not in storage (its ``GET`` answered
``404``: expired, or lost by the store) is reported as a failure with cause
``InputNotFound`` before the container exits 1, as the algorithm SDK does, so that the run
fails saying why.

Faults, drawn per pod from the shard's mix or forced by env ``NEXUS_DEVCLUSTER_FAULT`` /
annotation ``devcluster.nexus/fault``:

``oom``        killed after the duration: ``OOMKilled``, exit 137, nothing reported;
``image-pull`` never runs: ``ErrImagePull``/``ImagePullBackOff`` (played by the kubelet);
``exit``       reads its input, reports a *failure* completion
               (``{"cause": "AlgorithmFailed", "message": ...}``), then exits 1;
``silent``     exits 0 after the duration without reporting anything;
``hang``       runs until killed (``activeDeadlineSeconds`` or deletion);
``evicted``    evicted by its kubelet after the duration: ``Failed``, reason ``Evicted``, a
               ``DisruptionTarget`` condition, exit 137 (played by the kubelet);
``node-lost``  its node lost after the duration: ``Failed`` with a ``DisruptionTarget``
               condition from the pod garbage collector (played by the kubelet);
``unschedulable`` never placed: ``PodScheduled`` false, reason ``Unschedulable`` (played by
               the Job controller, which then hands the pod to no kubelet).

Annotations (on the pod template or the Job) choose faults per run rather than per pod:
``devcluster.nexus/fault-pods: "N"`` shows the fault on the first N pods of each run only
(a retried run's next attempt then succeeds), and ``devcluster.nexus/memory-needed:
"1500Mi"`` makes a container whose memory limit is below that ``OOMKilled``, as an
algorithm that needs that much would be.

All simulated pods share one :class:`nexus.core.httpcalls.HttpCalls` client (kept-alive connections,
at most ``concurrency`` per host) and a fixed pool of worker tasks that performs the HTTP
steps; the waiting itself is a timer. The steps stay real HTTP requests, one per step as
a container sends them: the receiver and the stores must see what they see in
production. They are a tenth to a fifth of the emulator's CPU, most of it the kernel's
socket writes, and what is left of the client's own work is small (a step's back-off is
only made once it fails).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from nexus.core.httpcalls import Answer, CallFailed, HttpCalls
from nexus.core.waiting import Backoff
from nexus_dev.cluster.kubelet import PodRun

if TYPE_CHECKING:
    from nexus_dev.cluster.kubelet import Kubelet

FAULTS = ("oom", "image-pull", "exit", "silent", "hang", "evicted", "node-lost", "unschedulable")
_JSON_HEADERS = {"Content-Type": "application/json"}
INPUT_NOT_FOUND = "InputNotFound"
"""The failure cause a run's container reports when its input is not in storage."""
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Answers a step is tried again after: the server is busy, restarting or missing a
dependency for now. (Another 4xx says the request itself is wrong; trying again is futile.)"""


def parse_distribution(text: str) -> Callable[[], float]:
    """``fixed:S``, ``uniform:A,B`` or ``exponential:MEAN`` (seconds) as a sampler."""
    kind, _, params = text.partition(":")
    try:
        values = [float(v) for v in params.split(",")] if params else []
    except ValueError as exc:
        raise ValueError(f"bad duration distribution {text!r}: numbers expected") from exc
    if kind == "fixed" and len(values) == 1 and values[0] >= 0:
        fixed = values[0]
        return lambda: fixed
    if kind == "uniform" and len(values) == 2 and 0 <= values[0] <= values[1]:
        low, high = values
        return lambda: random.uniform(low, high)
    if kind == "exponential" and len(values) == 1 and values[0] > 0:
        rate = 1.0 / values[0]
        return lambda: random.expovariate(rate)
    raise ValueError(
        f"bad duration distribution {text!r}: use fixed:S, uniform:A,B or exponential:MEAN"
    )


def parse_faults(text: str) -> dict[str, float]:
    """``oom=0.01,hang=0.02`` as ``{fault: probability}``; the total must be ≤ 1."""
    faults: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}: choose from {', '.join(FAULTS)}")
        try:
            faults[name] = float(value)
        except ValueError as exc:
            raise ValueError(f"fault {name!r} needs a probability, e.g. {name}=0.01") from exc
    if any(p < 0 for p in faults.values()) or sum(faults.values()) > 1:
        raise ValueError("fault probabilities must be ≥ 0 and add up to at most 1")
    return faults


@dataclass(frozen=True)
class SimulationSettings:
    """How simulated containers behave on a shard."""

    duration: str = "fixed:0.05"
    """How long the algorithm "works" before calling out: ``fixed:S``, ``uniform:A,B``,
    ``exponential:MEAN`` (seconds)."""
    faults: str = ""
    """Fault mix, e.g. ``oom=0.01,image-pull=0.01,exit=0.01,silent=0.01,hang=0.01``."""
    concurrency: int = 64
    """Worker tasks (and pooled connections) performing simulated pods' HTTP calls."""
    request_timeout: float = 10.0
    """Seconds before one HTTP call of a simulated pod counts as failed (and is retried)."""
    retry_for: float = 300.0
    """Seconds a simulated pod keeps trying a step that fails in a way that may pass,
    counted from the step's first failure. Five minutes outlast a rolling update of the
    receiver or a store's restart; past them the pod fails as a real container would."""
    retry_first: float = 0.2
    """Seconds before the first retry of a failed step; doubled after each failure."""
    retry_cap: float = 5.0
    """The longest wait between two tries of a step (also for a longer ``Retry-After``):
    a server back after an outage is found within this long."""


class _StepFailed(Exception):
    def __init__(self, problem: str, status: int | None = None) -> None:
        super().__init__(problem)
        self.status = status
        """The answer's status, when the step was answered."""


class _GaveUp(_StepFailed):
    """A step that kept failing in a way that may pass, until its ``retry_for`` was over."""


def retry_after(answer: Answer) -> float | None:
    """The seconds an answer's ``Retry-After`` asks for, when it names a number of them."""
    value = answer.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the back-off decides
    return seconds if seconds >= 0 else None


_ARGUMENTS = frozenset({"sas-uri", "request-id"})


def _arguments(args: list[str]) -> tuple[str | None, str | None]:
    """The ``--sas-uri`` and ``--request-id`` among a container's args (``--flag=value``
    or ``--flag value``; the first of each wins), in one pass."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        flag, equals, value = arg[2:].partition("=")
        if flag not in _ARGUMENTS or flag in found:
            continue
        if equals:
            found[flag] = value
        elif i + 1 < len(args):
            found[flag] = args[i + 1]
    return found.get("sas-uri"), found.get("request-id")


def _stopped(run: PodRun) -> bool:
    """Whether the container was killed while a call was in flight (state changes on awaits)."""
    return run.exited or run.deleting


class SimulatedRuntime:
    """Runs simulated containers for one shard's kubelet."""

    def __init__(self, kubelet: Kubelet, settings: SimulationSettings) -> None:
        self.kubelet = kubelet
        self.settings = settings
        self.duration = parse_distribution(settings.duration)
        self.faults = parse_faults(settings.faults)
        self.ready: deque[PodRun] = deque()
        """Pods whose duration is over, waiting for a free worker (oldest first)."""
        self._idle: list[asyncio.Future[PodRun]] = []
        """Workers waiting for a pod: each is handed the next one directly."""
        self.calls: HttpCalls | None = None
        self.workers: list[asyncio.Task[None]] = []

    def set_faults(self, faults: dict[str, float]) -> None:
        """Change the fault mix for pods started from now on."""
        self.faults = parse_faults(",".join(f"{k}={v}" for k, v in faults.items()))

    async def open(self) -> None:
        self.calls = HttpCalls(
            limit=self.settings.concurrency, timeout=self.settings.request_timeout
        )
        self.workers = [
            asyncio.create_task(self._work(), name=f"devcluster-simulated-pod-{i}")
            for i in range(self.settings.concurrency)
        ]

    async def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        self.workers = []
        if self.calls is not None:
            await self.calls.close()
            self.calls = None

    def draw_fault(self) -> str | None:
        if not self.faults:
            return None
        draw = random.random()
        for fault, probability in self.faults.items():
            if draw < probability:
                return fault
            draw -= probability
        return None

    def start(self, run: PodRun) -> None:
        if run.fault == "hang":
            run.write_log(b"working (this will take a while)\n", self.kubelet.settings.log_limit)
            return
        loop = asyncio.get_running_loop()
        delay = self.duration()
        if run.fault == "oom":
            run.timer = loop.call_later(delay, self.kubelet.exited, run, 137, "OOMKilled")
        elif run.fault in ("evicted", "node-lost"):
            run.timer = loop.call_later(delay, self.kubelet.disrupted, run, run.fault)
        elif run.fault == "silent":
            run.timer = loop.call_later(delay, self.kubelet.exited, run, 0, "Completed")
        else:
            run.timer = loop.call_later(delay, self._hand_over, run)

    def kill(self, run: PodRun, grace: float) -> None:
        # A simulated container stops at once on SIGTERM (exit 143) or SIGKILL (137).
        self.kubelet.exited(run, 143 if grace > 0 else 137, "Error")

    def _hand_over(self, run: PodRun) -> None:
        """A pod's duration is over: to an idle worker at once, else to the next free one
        (a future per idle worker, not an ``asyncio.Queue``'s bookkeeping per pod)."""
        idle = self._idle
        while idle:
            waiter = idle.pop()
            if not waiter.done():
                waiter.set_result(run)
                return
        self.ready.append(run)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        ready, idle = self.ready, self._idle
        while True:
            if ready:
                run = ready.popleft()
            else:
                waiter: asyncio.Future[PodRun] = loop.create_future()
                idle.append(waiter)
                run = await waiter
            if run.exited or run.deleting:
                continue
            try:
                await self._play(run)
            except _StepFailed as failure:
                self._log(run, f"error: {failure}")
                if not run.exited:
                    self.kubelet.exited(run, 1, "Error")

    def _log(self, run: PodRun, line: str) -> None:
        run.write_log(line.encode() + b"\n", self.kubelet.settings.log_limit)

    async def _call(
        self,
        run: PodRun,
        method: str,
        url: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """The answer's body of a step that must succeed (2xx); see :meth:`_exchange`."""
        return (await self._exchange(run, method, url, body, headers)).body

    async def _exchange(
        self,
        run: PodRun,
        method: str,
        url: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        also: int | None = None,
    ) -> Answer:
        """The answer of a step (2xx, or ``also``), tried again while it fails in a way
        that may pass (see the module docstring); :class:`_GaveUp` once that is over,
        :class:`_StepFailed` at once for an answer that will not change."""
        calls = self.calls
        assert calls is not None
        backoff: Backoff | None = None  # made at the first failure: most steps have none
        give_up = 0.0
        while True:
            try:
                answer = await calls.call(method, url, body, headers, idempotent=True)
            except CallFailed as exc:
                problem, wait = f"{method} {url} failed: {exc}", None
            else:
                if 200 <= answer.status < 300 or answer.status == also:
                    return answer
                problem = f"{method} {url} answered {answer.status}: {answer.body[:200]!r}"
                if answer.status not in RETRYABLE:
                    raise _StepFailed(problem, answer.status)
                wait = retry_after(answer)
            settings = self.settings
            now = asyncio.get_running_loop().time()
            if backoff is None:
                backoff = Backoff(settings.retry_first, settings.retry_cap, jitter=0.5)
                give_up = now + settings.retry_for
            delay = backoff.failed()
            if wait is not None:
                delay = min(max(wait, delay), settings.retry_cap)
            if now + delay > give_up or _stopped(run):
                raise _GaveUp(f"{problem} (gave up after {backoff.failures} tries)")
            if backoff.failures == 1:
                self._log(run, f"{problem}; trying again for up to {settings.retry_for:g} s")
            await asyncio.sleep(delay)
            if _stopped(run):
                raise _StepFailed(f"{problem} (stopped while waiting to try again)")

    @staticmethod
    def _failure(run: PodRun, cause: str, message: str) -> bytes:
        """A failure completion's body (with the attempt that failed, when the Job says)."""
        failure: dict[str, object] = {"cause": cause, "message": message}
        if run.env.get("NEXUS__ATTEMPT", "").isdigit():
            failure["attempt"] = int(run.env["NEXUS__ATTEMPT"])
        return orjson.dumps(failure)

    async def _input_not_found(
        self, run: PodRun, completion_url: str, headers: dict[str, str]
    ) -> None:
        """Report that the run's input is not in storage (reading it answered 404), as the
        algorithm SDK does, so that the run fails saying why; the pod then exits 1."""
        message = (
            "the run's input is not in object storage (reading it answered 404): it expired"
            " or the store lost it"
        )
        body = self._failure(run, INPUT_NOT_FOUND, message)
        try:
            await self._call(run, "POST", completion_url, body, headers)
        except _StepFailed as failure:
            self._log(run, f"error: could not report the missing input: {failure}")
        else:
            self._log(run, "reported failure: input not found")

    async def _play(self, run: PodRun) -> None:
        env = run.env
        input_url, request_id = _arguments([str(a) for a in run.container.get("args") or ()])
        request_id = request_id or env.get("NEXUS__REQUEST_ID", "")
        algorithm = env.get("NEXUS__ALGORITHM_NAME", "")
        receiver = env.get("NEXUS__RECEIVER_URL", "").rstrip("/")
        upload_url = env.get("NEXUS__RESULT_UPLOAD_URL")
        completion_url = (
            f"{receiver}/algorithm/v1.2/complete/{algorithm}/requests/{request_id}"
            if receiver
            else None
        )
        headers = {
            "Authorization": f"Bearer {env.get('NEXUS__RUN_TOKEN', '')}",
            "Content-Type": "application/json",
        }
        body = b""
        if "NEXUS__INPUT" in env:  # a small input travels inside the Job
            body = env["NEXUS__INPUT"].encode()
        elif input_url:
            try:
                body = (await self._exchange(run, "GET", input_url)).body
            except _StepFailed as failure:
                if failure.status == 404 and completion_url and not _stopped(run):
                    await self._input_not_found(run, completion_url, headers)
                raise
            self._log(run, f"read {len(body)} bytes of input")
        if _stopped(run):
            return
        if run.fault == "exit":
            if completion_url:
                report = self._failure(run, "AlgorithmFailed", "simulated failure: exit 1")
                await self._call(run, "POST", completion_url, report, headers)
                self._log(run, "reported failure")
            self._log(run, "exiting with code 1")
            self.kubelet.exited(run, 1, "Error")
            return
        try:
            orjson.loads(body)
            result = body
        except orjson.JSONDecodeError:
            result = orjson.dumps({"requestId": request_id, "ok": True})
        inline_limit = env.get("NEXUS__RESULT_INLINE_LIMIT", "")
        if completion_url and inline_limit.isdigit() and len(result) <= int(inline_limit):
            inline = b'{"cause":null,"message":null,"sasUri":null,"result":' + result + b"}"
            try:
                answer = await self._exchange(
                    run, "POST", completion_url, inline, headers, also=413
                )
            except _GaveUp as failure:
                if not upload_url or _stopped(run):
                    raise
                # not delivered: the result goes where the maintainer looks for it
                self._log(run, f"error: {failure}; uploading the result instead")
                await self._call(run, "PUT", upload_url, result, _JSON_HEADERS)
                self._log(run, "exiting with the result uploaded")
                self.kubelet.exited(run, 0, "Completed")
                return
            if answer.status != 413:
                self._log(run, "reported completion with its result inline")
                if not _stopped(run):
                    self.kubelet.exited(run, 0, "Completed")
                return
            self._log(run, "the receiver refused the result inline as too large")
        if upload_url:
            await self._call(run, "PUT", upload_url, result, _JSON_HEADERS)
            self._log(run, "uploaded result")
        if _stopped(run):
            return
        if completion_url:
            completion = {"cause": None, "message": None, "sasUri": None}
            try:
                await self._call(run, "POST", completion_url, orjson.dumps(completion), headers)
            except _GaveUp as failure:
                if not upload_url or _stopped(run):
                    raise
                # the result is where the maintainer looks for it: the run is not lost
                self._log(run, f"error: {failure}; exiting with the result uploaded")
            else:
                self._log(run, "reported completion")
        if not _stopped(run):
            self.kubelet.exited(run, 0, "Completed")
