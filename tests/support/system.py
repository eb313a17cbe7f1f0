"""The whole system in the test's event loop: local clusters, receiver and schedulers.

Everything is real and talks over loopback HTTP: the scheduler and receiver applications
are the ones ``nexus scheduler`` / ``nexus receiver`` run, on the test's PostgreSQL
database, Redis key prefix and S3 bucket; the shards are the project's API emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import yarl
from aiohttp import web
from harness import S3Bucket, Servers
from multidict import CIMultiDictProxy

from nexus.core.config import (
    HttpSettings,
    LogSettings,
    PostgresSettings,
    RedisSettings,
    ShardSettings,
    SigningSettings,
    StorageSettings,
)
from nexus.core.lifecycle import LIFECYCLE, Listener, listen
from nexus.scheduler.app import create_app as create_scheduler
from nexus.scheduler.settings import AuthSettings, SchedulerSection, SchedulerSettings, ServiceToken
from nexus.scheduler.teamsettings import TeamSettings
from nexus_dev.cluster.emulators import DevCluster, ShardSpec
from nexus_dev.servers.supervision import free_ports
from receiver.app import create_app as create_receiver
from receiver.settings import ReceiverSection, ReceiverSettings

TOKEN = "test-token-" + "x" * 20
OTHER_TOKEN = "limited-token-" + "y" * 20
OPS_TOKEN = "ops-token-" + "z" * 24
"""An operator's token: granted every caller's runs (to watch runs no test token made)."""
SIGNING_KEY = "signing-key-for-tests-0123456789"
NAMESPACE = "nexus"
GROUP = "/apis/science.sneaksanddata.com/v1/namespaces/nexus"
_PLURALS = {
    "NexusAlgorithmTemplate": "nexusalgorithmtemplates",
    "NexusAlgorithmWorkgroup": "nexusalgorithmworkgroups",
    "NexusSchedule": "nexusschedules",
}


def free_port() -> int:
    """A port for a server the test starts later: from below the ephemeral range (as the
    local servers' ports are), so no outgoing connection of any process takes it between
    its choice and the server's bind."""
    return free_ports(1)[0]


def template(
    name: str,
    *,
    workgroup: str = "default",
    command: Sequence[str] = ("python", "-m", "nexus_sdk.examples", "echo"),
    inline: bool = True,
    deadline: int = 60,
    retries: int = 0,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "science.sneaksanddata.com/v1",
        "kind": "NexusAlgorithmTemplate",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "container": {
                "image": f"algorithms/{name}",
                "registry": "example.io",
                "versionTag": "1.0",
            },
            "computeResources": {"cpuLimit": "1", "memoryLimit": "1Gi"},
            "workgroupRef": {
                "name": workgroup,
                "group": "science.sneaksanddata.com",
                "kind": "NexusAlgorithmWorkgroup",
            },
            "command": list(command),
            "args": ["--sas-uri={sas-uri}", "--request-id={request-id}"],
            "runtimeEnvironment": {"deadlineSeconds": deadline, "maximumRetries": retries},
            "errorHandlingBehaviour": {"transientExitCodes": [], "fatalExitCodes": []},
            "payloadConfiguration": {"payloadValidFor": "1h", "inline": inline},
            **spec,
        },
    }


def service_token(caller: str, token: str, **options: Any) -> ServiceToken:
    """A service token of ``caller`` for :func:`local_system` (``grants=…``, say)."""
    return ServiceToken(caller, hashlib.sha256(token.encode()).hexdigest(), **options)


def workgroup(name: str, shard: str) -> dict[str, Any]:
    return {
        "apiVersion": "science.sneaksanddata.com/v1",
        "kind": "NexusAlgorithmWorkgroup",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "description": f"runs on {shard}",
            "cluster": shard,
            "tolerations": [],
            "affinity": {},
        },
    }


@dataclass
class SchedulerProcess:
    """A scheduler application served in this event loop."""

    settings: SchedulerSettings
    app: web.Application
    runner: web.AppRunner
    listener: Listener
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http.port}"

    @property
    def pod(self) -> str:
        return self.settings.scheduler.pod_name

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.app[LIFECYCLE].ready = False
            await self.listener.close()  # its submits answered before its clients close
            await self.runner.cleanup()


@dataclass
class System:
    cluster: DevCluster
    kubeconfig_dir: Path
    receiver_url: str
    schedulers: list[SchedulerProcess]
    session: aiohttp.ClientSession
    base_settings: SchedulerSettings
    _stack: contextlib.AsyncExitStack = field(repr=False)
    postgres_dsn: str = ""
    bucket: S3Bucket | None = None
    balancer_url: str = ""
    """A round-robin balancer over the running schedulers: what production puts in front
    of them, and so their public URL (the one signed input links name)."""

    @property
    def url(self) -> str:
        """The first scheduler still running."""
        return next(s for s in self.schedulers if not s.stopped).url

    def headers(self, token: str = TOKEN, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", **extra}

    async def submit(
        self,
        algorithm: str,
        body: dict[str, Any] | None = None,
        *,
        url: str | None = None,
        token: str = TOKEN,
        **headers: str,
    ) -> str:
        async with self.session.post(
            f"{url or self.url}/algorithm/v1.2/run/{algorithm}",
            json={"algorithmParameters": {}} if body is None else body,
            headers=self.headers(token, **headers),
        ) as response:
            answer = await response.json()
            assert response.status == 202, (response.status, answer)
            return str(answer["requestId"])

    async def get(self, path: str, token: str = TOKEN) -> tuple[int, Any]:
        async with self.session.get(
            f"{self.url}{path}", headers=self.headers(token), allow_redirects=False
        ) as response:
            body = (
                await response.json()
                if response.content_type == "application/json"
                else await response.read()
            )
            return response.status, body

    async def call(
        self,
        method: str,
        path: str,
        *,
        base: str | None = None,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        """(status, body, headers) of any request; ``path`` is sent exactly as written
        (``%2e%2e`` stays encoded), ``token=None`` sends no Authorization header, and a JSON
        answer is decoded."""
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        url = yarl.URL(f"{base or self.url}{path}", encoded=True)
        async with self.session.request(
            method, url, headers=sent, allow_redirects=False, **options
        ) as response:
            body = (
                await response.json()
                if response.content_type == "application/json"
                else await response.read()
            )
            return response.status, body, response.headers

    async def stored(self) -> tuple[int, set[str]]:
        """What refused requests must not leave behind: the number of rows in ``runs`` and
        the input objects in the bucket."""
        assert self.bucket is not None
        connection = await asyncpg.connect(self.postgres_dsn)
        try:
            rows = int(await connection.fetchval("SELECT count(*) FROM runs"))
        finally:
            await connection.close()
        return rows, {key for key in self.bucket.keys() if "inputs/" in key}  # noqa: SIM118

    async def result(self, algorithm: str, request_id: str, token: str = TOKEN) -> dict[str, Any]:
        status, body = await self.get(
            f"/algorithm/v1.2/results/{algorithm}/requests/{request_id}", token
        )
        assert status == 200, (status, body)
        return dict(body)

    async def wait_for(
        self,
        algorithm: str,
        request_id: str,
        *statuses: str,
        timeout: float = 30.0,
        token: str = TOKEN,
    ) -> dict[str, Any]:
        """Poll the result until the run is in one of ``statuses`` (default: any terminal),
        as the caller of ``token`` (who must be able to see the run)."""
        wanted = set(statuses) or {
            "COMPLETED",
            "FAILED",
            "SCHEDULING_TIMEOUT",
            "DEADLINE_EXCEEDED",
            "CANCELLED",
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            answer = await self.result(algorithm, request_id, token)
            if answer["status"] in wanted:
                return answer
            if loop.time() > deadline:
                raise AssertionError(
                    f"run {request_id} stayed {answer['status']}, wanted {wanted}; "
                    f"in the cluster: {self.kubernetes_state(request_id)}"
                )
            await asyncio.sleep(0.05)

    def kubernetes_state(self, request_id: str) -> dict[str, Any]:
        """The Job and Pods of a run on every shard (for failure messages)."""
        found: dict[str, Any] = {}
        for name, shard in self.cluster.shards.items():
            job = shard.store.get("jobs", NAMESPACE, request_id)
            if job is None:
                continue
            pods = [
                {
                    "status": pod.get("status"),
                    "log": shard.kubelet.read_log(NAMESPACE, pod["metadata"]["name"])[
                        -2000:
                    ].decode(errors="replace"),
                }
                for pod in shard.store.collections["pods"].objects.values()
                if pod["metadata"].get("labels", {}).get("job-name") == request_id
            ]
            found[name] = {"job status": job.get("status"), "pods": pods}
        return found

    async def apply(self, shard: str, obj: dict[str, Any]) -> None:
        """Create a custom resource on ``shard`` (the controller in single-cluster mode)."""
        target = self.cluster[shard]
        async with self.session.post(
            f"{target.url}{GROUP}/{_PLURALS[obj['kind']]}",
            json=obj,
            headers={"Authorization": f"Bearer {target.token}"},
        ) as response:
            assert response.status in (201, 409), await response.text()

    async def remove(self, shard: str, kind: str, name: str) -> None:
        """Delete a custom resource from ``shard``."""
        target = self.cluster[shard]
        async with self.session.delete(
            f"{target.url}{GROUP}/{_PLURALS[kind]}/{name}",
            headers={"Authorization": f"Bearer {target.token}"},
        ) as response:
            assert response.status == 200, await response.text()

    async def start_scheduler(
        self, kubeconfig_dir: Path | None = None, **section: Any
    ) -> SchedulerProcess:
        """Another scheduler pod; ``kubeconfig_dir`` points it at other kubeconfigs of the
        shards (through a :class:`~support.proxy.Proxy`, say)."""
        port = free_port()
        base = self.base_settings
        settings = replace(
            base,
            http=replace(base.http, port=port),
            shards=replace(
                base.shards, kubeconfig_dir=kubeconfig_dir or base.shards.kubeconfig_dir
            ),
            scheduler=replace(
                base.scheduler,
                pod_name=f"scheduler-{uuid.uuid4().hex[:6]}",
                public_url=self.balancer_url,
                **section,
            ),
        )
        process = await serve_scheduler(settings)
        self.schedulers.append(process)
        return process


def _balancer(system: System) -> Any:
    """A handler passing each request to the next running scheduler, as a load balancer."""
    turn = iter(range(10**9))
    passed = ("content-type", "link", "location", "retry-after", "www-authenticate")

    async def forward(request: web.Request) -> web.Response:
        live = [s for s in system.schedulers if not s.stopped]
        if not live:
            return web.Response(status=503, text="no scheduler is running")
        target = live[next(turn) % len(live)]
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with system.session.request(
            request.method, target.url + request.path_qs, data=await request.read(),
            headers=headers, allow_redirects=False,
        ) as answer:  # fmt: skip
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() in passed}
            return web.Response(body=body, status=answer.status, headers=kept)

    return forward


async def send_raw(base: str, request: bytes, timeout: float = 10.0) -> tuple[int, Any]:
    """Send ``request`` exactly as given (bytes no HTTP client would send, or a whole body
    whatever the answer) on a new connection; (status, body) of the answer, the body
    decoded when it is JSON. A request with ``Connection: close`` returns once the server
    has closed the connection."""
    url = yarl.URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        async with asyncio.timeout(timeout):
            writer.write(request)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length, json = -1, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                elif name.strip().lower() == "content-type":
                    json = value.strip().startswith("application/json")
            body = await (reader.readexactly(length) if length >= 0 else reader.read())
            if length >= 0 and b"\r\nconnection: close\r\n" in request.lower():
                # the server has let go of the connection (its transport closed) before
                # this returns: on a loaded machine it may otherwise still hold it when
                # the test stops the server, and leave it unclosed (a ResourceWarning)
                await reader.read()
            return status, orjson.loads(body) if json else body
    finally:
        writer.close()
        await writer.wait_closed()


async def serve_scheduler(settings: SchedulerSettings) -> SchedulerProcess:
    """A scheduler with exactly these settings (its pod name included), serving as in
    production: its submits on the lean server, every other request handed to aiohttp."""
    app = await create_scheduler(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    listener = await listen(runner, settings.http, host="127.0.0.1")
    app[LIFECYCLE].ready = True
    return SchedulerProcess(settings, app, runner, listener)


@contextlib.asynccontextmanager
async def local_system(
    servers: Servers,
    *,
    shards: Sequence[ShardSpec] = (ShardSpec(name="shard-0", mode="simulated"),),
    schedulers: int = 1,
    templates: Sequence[dict[str, Any]] = (),
    workgroups: Sequence[tuple[str, str]] = (("default", "shard-0"),),
    create_rate: dict[str, float] | None = None,
    section: dict[str, Any] | None = None,
    receiver: ReceiverSection | None = None,
    auth: dict[str, Any] | None = None,
    store: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
    teams: TeamSettings | None = None,
    tokens: Sequence[ServiceToken] = (),
) -> AsyncIterator[System]:
    """The whole system; ``auth`` adds settings (JWT keys, issuer…) to the schedulers'
    :class:`AuthSettings`, and ``tokens`` more service tokens (see :func:`service_token`),
    next to the test tokens ``TOKEN``, ``OTHER_TOKEN`` and ``OPS_TOKEN``, ``store``
    to every service's :class:`PostgresSettings` and ``storage`` to its
    :class:`StorageSettings`."""
    tmp_path, postgres_dsn, s3 = servers.tmp_path, servers.postgres_dsn, servers.s3
    redis_url, redis_prefix = servers.redis_url, servers.redis_prefix
    kubeconfigs = tmp_path / "shards"
    async with contextlib.AsyncExitStack() as stack:
        cluster = DevCluster(list(shards), kubeconfigs)
        await cluster.start()
        stack.push_async_callback(cluster.stop)
        # the shards serve HTTPS with the cluster's throwaway authority; the schedulers HTTP
        trust = cluster.authority.client_context() if cluster.authority else True
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust))
        stack.push_async_callback(session.close)
        http = HttpSettings(host="127.0.0.1", port=0, drain_delay=0, shutdown_timeout=5)
        postgres = PostgresSettings(dsn=postgres_dsn, pool_max_size=6, **(store or {}))
        storage_settings = StorageSettings(
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
            bucket=s3.bucket,
            **(storage or {}),
        )
        signing = SigningSettings(keys=(SIGNING_KEY,))
        receiver_port = free_port()
        receiver_settings = ReceiverSettings(
            http=replace(http, port=receiver_port),
            log=LogSettings(format="text"),
            postgres=postgres,
            storage=storage_settings,
            signing=signing,
            receiver=receiver or ReceiverSection(),
        )
        receiver_app = await create_receiver(receiver_settings)
        receiver_runner = web.AppRunner(receiver_app, handle_signals=False)
        await receiver_runner.setup()
        stack.push_async_callback(receiver_runner.cleanup)
        # the lean server it runs on in production: its requests finish before its store
        # closes, as in run_app
        receiver_listener = await listen(
            receiver_runner, replace(receiver_settings.http, shutdown_timeout=5), host="127.0.0.1"
        )
        stack.push_async_callback(receiver_listener.close)
        receiver_app[LIFECYCLE].ready = True
        first_shard = shards[0].name
        base = SchedulerSettings(
            http=http,
            log=LogSettings(format="text"),
            postgres=postgres,
            redis=RedisSettings(url=redis_url, key_prefix=redis_prefix),
            storage=storage_settings,
            shards=ShardSettings(
                kubeconfig_dir=kubeconfigs,
                controller_kubeconfig=kubeconfigs / f"{first_shard}.kubeconfig",
                controller_namespace=NAMESPACE,
                runtime_namespace=NAMESPACE,
                create_rate=create_rate or {},
                default_create_rate=5000,
            ),
            auth=AuthSettings(
                service_tokens=(
                    ServiceToken("tester", hashlib.sha256(TOKEN.encode()).hexdigest()),
                    ServiceToken(
                        "limited", hashlib.sha256(OTHER_TOKEN.encode()).hexdigest(), ("echo",)
                    ),
                    ServiceToken(
                        "ops", hashlib.sha256(OPS_TOKEN.encode()).hexdigest(), grants=("*",)
                    ),
                    *tokens,
                ),
                **(auth or {}),
            ),
            signing=signing,
            scheduler=SchedulerSection(
                **{
                    "receiver_url": f"http://127.0.0.1:{receiver_port}",
                    "heartbeat_interval": 0.5,
                    "heartbeat_ttl": 3,
                    "dispatch_idle_poll": 0.05,
                    "retry_base_delay": 0.2,
                    "retry_max_delay": 1,
                    **(section or {}),
                }
            ),
            teams=teams or TeamSettings(),
        )
        system = System(
            cluster,
            kubeconfigs,
            f"http://127.0.0.1:{receiver_port}",
            [],
            session,
            base,
            stack,
            postgres_dsn=postgres_dsn,
            bucket=s3,
        )
        balancer_port = free_port()
        system.balancer_url = f"http://127.0.0.1:{balancer_port}"
        balancer = web.Application()
        balancer.router.add_route("*", "/{path:.*}", _balancer(system))
        balancer_runner = web.AppRunner(balancer, handle_signals=False, access_log=None)
        await balancer_runner.setup()
        await web.TCPSite(balancer_runner, "127.0.0.1", balancer_port).start()
        stack.push_async_callback(balancer_runner.cleanup)
        for name, shard in workgroups:
            await system.apply(first_shard, workgroup(name, shard))
        for obj in templates:
            await system.apply(first_shard, obj)
        for _ in range(schedulers):
            await system.start_scheduler()
        try:
            yield system
        finally:
            for process in reversed(system.schedulers):
                await process.stop()
