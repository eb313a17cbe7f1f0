"""``nexus dev``: one READY line, real servers, and nothing left behind after a signal."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import is_alive
from support.devprocess import DevProcess, call, read_status, wait_finished

from nexus_dev.cli import READY_PREFIX
from nexus_dev.cluster.certificates import trusting
from nexus_dev.servers.databases import redis_ping
from nexus_dev.servers.services import LocalPostgres, PostgresInfo, S3Info
from nexus_dev.servers.supervision import descendants


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dev_serves_real_services_and_stops_cleanly(sig: signal.Signals) -> None:
    dev = DevProcess()
    ready = dev.ready()
    children = descendants(dev.proc.pid)
    assert children  # postgres (and its helpers), redis, weed, the cluster, nexus

    # a person's first run: echo answers with its own parameters
    headers = {"Authorization": f"Bearer {ready['token']}", "Content-Type": "application/json"}
    request_id = call(
        "POST",
        f"{ready['scheduler']}/algorithm/v1.2/run/echo",
        headers,
        {"algorithmParameters": {"hello": "dev"}},
    )["requestId"]
    answer = wait_finished(ready["scheduler"], "echo", request_id, headers)
    assert answer["status"] == "COMPLETED", answer
    with urllib.request.urlopen(answer["resultUri"], timeout=10) as response:
        assert json.loads(response.read()) == {"hello": "dev"}
    request_id = call(
        "POST",
        f"{ready['scheduler']}/algorithm/v1.2/run/maybe-fail",
        headers,
        {"algorithmParameters": {"fail": "on request"}},
    )["requestId"]
    answer = wait_finished(ready["scheduler"], "maybe-fail", request_id, headers)
    assert answer["status"] == "FAILED", answer
    assert answer["runErrorMessage"] == "RequestedFailure: on request"
    assert Path(ready["shards"]["shard-0"]["kubeconfig"]).is_file()
    assert ready["receiver"].startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{ready['maintainer']}/health/ready", timeout=10) as response:
        assert response.status == 200

    pg = PostgresInfo(**{k: v for k, v in ready["postgres"].items() if k != "dsn"})
    assert ready["postgres"]["dsn"] == pg.dsn
    checker = LocalPostgres(external=pg)
    assert checker.psql("SELECT 1") == "1"
    host, port = ready["redis"]["url"].removeprefix("redis://").split("/")[0].split(":")
    assert redis_ping(host, int(port))
    s3 = ready["s3"]
    info = S3Info(s3["endpointUrl"], s3["accessKeyId"], s3["secretAccessKey"], s3["region"])
    assert info.call("GET").status == 200
    workdir = Path(ready["workdir"])
    assert workdir.is_dir()
    status = read_status(ready)
    assert Path(ready["status"]) == workdir / "status.json"
    assert status["state"] == "running" and status["pid"] == dev.proc.pid
    names = ["postgres", "redis", "s3", "devcluster", "receiver", "scheduler-0", "maintainer"]
    assert [(s["name"], s["state"], s["restarts"]) for s in status["services"]] == [
        (name, "running", 0) for name in names
    ]

    code, err = dev.finish(sig)
    assert code == 0, err
    exports = f"export NEXUS_URL={ready['scheduler']}\nexport NEXUS_TOKEN={ready['token']}\n"
    assert exports in err  # for a shell, after the READY line
    assert [pid for pid in children if is_alive(pid)] == []
    assert not workdir.exists()
    assert [line for line in dev.lines if line.startswith(READY_PREFIX)] == dev.lines  # one line


@pytest.mark.slow
def test_dev_with_two_shards_copies_the_catalog_to_the_second() -> None:
    """The example catalog lives in the controller cluster (the first shard); the
    maintainer's configuration controller keeps copies of it on the second."""
    dev = DevProcess("--shards", "2", "--mode", "simulated")
    try:
        ready = dev.ready()
        second = ready["shards"]["shard-1"]
        config = yaml.safe_load(Path(second["kubeconfig"]).read_text())
        headers = {"Authorization": f"Bearer {config['users'][0]['user']['token']}"}
        trust = trusting(config["clusters"][0]["cluster"]["certificate-authority-data"])
        group = f"{second['url']}/apis/science.sneaksanddata.com/v1/namespaces/nexus"

        def names(url: str) -> set[str]:
            return {o["metadata"]["name"] for o in call("GET", url, headers, trust=trust)["items"]}

        deadline = time.monotonic() + 30
        wanted = (set(ready["algorithms"]), {"default", "shard-0", "shard-1"}, {"nexus-examples"})
        while time.monotonic() < deadline:
            found = (
                names(f"{group}/nexusalgorithmtemplates"),
                names(f"{group}/nexusalgorithmworkgroups"),
                names(f"{second['url']}/api/v1/namespaces/nexus/configmaps"),
            )
            if found == wanted:
                break
            time.sleep(0.2)
        assert found == wanted
        copy = call("GET", f"{group}/nexusalgorithmtemplates/echo", headers, trust=trust)
        assert copy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "nexus-maintainer"
        code, err = dev.finish(signal.SIGTERM)
        assert code == 0, err
    finally:
        dev.kill()


def test_dev_keeps_its_workdir_when_asked() -> None:
    # Not pytest's tmp_path: as root, PostgreSQL runs as another user, who must be able to
    # pass through every parent directory, and pytest's are private.
    parent = Path(tempfile.mkdtemp(prefix="nexus-dev-test-"))
    parent.chmod(0o755)
    try:
        dev = DevProcess("--workdir", str(parent), "--keep", "--services-only")
        workdir = Path(dev.ready()["workdir"])
        assert workdir.parent == parent
        code, err = dev.finish(signal.SIGTERM)
        assert code == 0, err
        assert (workdir / "postgres" / "data" / "PG_VERSION").exists()
    finally:
        shutil.rmtree(parent)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
def test_dev_stops_cleanly_when_its_terminal_closes(sig: signal.Signals) -> None:
    """The servers run in sessions of their own: a hang-up reaches only ``nexus dev``,
    which must stop them."""
    dev = DevProcess("--services-only")
    workdir = Path(dev.ready()["workdir"])
    children = descendants(dev.proc.pid)
    assert children
    code, err = dev.finish(sig)
    assert code == 0, err
    assert [pid for pid in children if is_alive(pid)] == []
    assert not workdir.exists()


@pytest.mark.slow
def test_dev_under_nohup_ignores_a_hang_up() -> None:
    """Started with SIGHUP ignored (``nohup``), a hang-up changes nothing."""
    dev = DevProcess("--services-only", ignore=signal.SIGHUP)
    try:
        dev.ready()
        dev.proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert dev.proc.poll() is None
        code, err = dev.finish(signal.SIGTERM)
        assert code == 0, err
    finally:
        dev.kill()


@pytest.mark.slow
def test_dev_fails_fast_and_keeps_the_logs_of_a_crash() -> None:
    """With ``--fail-fast`` a server that dies stops everything: the command exits 1, and
    the working directory (the logs it points to, the status saying who died) stays."""
    dev = DevProcess("--services-only", "--fail-fast")
    ready = dev.ready()
    workdir = Path(ready["workdir"])
    children = descendants(dev.proc.pid)
    try:
        redis = next(pid for pid in children if b"redis" in _command(pid))
        os.kill(redis, signal.SIGKILL)
        code, err = dev.wait(timeout=60)
        assert code == 1, err
        assert "redis was killed by SIGKILL; stopping everything (--fail-fast)" in err
        assert "logs kept in" in err and workdir.is_dir()
        assert [pid for pid in children if is_alive(pid)] == []
        status = read_status(ready)
        assert status["state"] == "failed"
        assert status["restartPolicy"]["failFast"] is True
        (redis_status,) = [s for s in status["services"] if s["name"] == "redis"]
        assert redis_status["restarts"] == 0 and redis_status["state"] == "stopped"
        assert redis_status["lastExit"] is not None
        assert redis_status["lastExit"]["signal"] == "SIGKILL"
    finally:
        dev.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def test_dev_does_not_start_on_a_store_that_refuses_its_bucket() -> None:
    """An external S3 that refuses the bucket (here: 403 to everything) stops the start,
    saying why, instead of failing every run later."""

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            "NEXUS_S3_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
            "AWS_ACCESS_KEY_ID": "someone",
            "AWS_SECRET_ACCESS_KEY": "something",
        }
        dev = DevProcess("--services-only", env=env)
        try:
            code, err = dev.wait(timeout=60)
        finally:
            dev.kill()
        assert code == 1, err
        assert "cannot make the bucket 'nexus': 403" in err
        assert not any(line.startswith(READY_PREFIX) for line in dev.lines)
        kept = re.search(r"logs kept in (\S+)", err)
        assert kept is not None, err
        shutil.rmtree(kept[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("option", ["--shards", "--schedulers"])
def test_dev_counts_must_be_positive(option: str) -> None:
    for value in ("0", "-1", "two"):
        done = subprocess.run(
            [sys.executable, "-m", "nexus", "dev", option, value],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2 and option in done.stderr, (value, done.stderr)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--restart-delay", "0"], "must be above 0 s"),
        (["--restart-delay", "soon"], "is not a number of seconds"),
        (["--restart-delay-max", "inf"], "must be above 0 s"),
        (["--restart-delay", "5", "--restart-delay-max", "1"], "must not be below the first"),
    ],
)
def test_dev_restart_delays_must_make_sense(args: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nexus", "dev", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and says in done.stderr, done.stderr


def test_dev_help_documents_every_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nexus", "dev", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(done.stdout.split())  # as wrapped for the terminal, unwrapped
    for option in (
        "--workdir", "--keep", "--binaries", "--log-format", "--mode", "--shards",
        "--schedulers", "--no-maintainer", "--port", "--host", "--create-rate", "--shard-rate",
        "--duration", "--faults", "--services-only", "--fail-fast", "--restart-delay",
        "--restart-delay-max", "nexus dev status", "status.json",
    ):  # fmt: skip
        assert option in text


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
