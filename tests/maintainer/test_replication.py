"""The configuration controller against a controller cluster and two emulated shards:
creates, updates and deletes reach both; foreign objects are never touched; a shard that
is down catches up; nothing is decided before the controller cluster is listed."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from harness import Servers
from maintaining import FAST, Process, environment, processes, spawn, wait_ready
from replicating import (
    RUNTIME_NS,
    SHARDS,
    Clusters,
    b64,
    clusters,
    config_map,
    copies_of,
    eventually,
    metric,
    replicating,
    secret,
    template,
    workgroup,
    written,
)
from support.standin import stand_in_shard
from support.system import free_port

from maintainer.copies import MANAGED_BY_LABEL, MANAGER, OWNER_LABEL, SOURCE_UID
from nexus.core.shards import CONFIG_MAPS, SECRETS, TEMPLATES, WORKGROUPS, ShardClient


def leading(process: Process) -> bool:
    return any(line.get("message") == "leading" for line in process.lines())


def spec_of(obj: dict[str, Any] | None) -> Any:
    return None if obj is None else obj.get("spec")


async def on_every_shard(c: Clusters, probe: Any, what: str) -> None:
    """Until ``probe(shard)`` holds on both shards."""

    async def everywhere() -> bool:
        for shard in SHARDS:
            if not await probe(shard):
                return False
        return True

    await eventually(everywhere, what=what)


async def test_creates_updates_and_deletes_reach_every_shard(tmp_path: Path) -> None:
    async with clusters(tmp_path) as c:
        db = await c.put(SECRETS, secret("db", password="first"))
        await c.put(SECRETS, secret("unrelated", token="never copied"))
        await c.put(CONFIG_MAPS, config_map("settings", LEVEL="debug"))
        await c.put(WORKGROUPS, workgroup("default", "shard-a", "first"))
        algo = await c.put(TEMPLATES, template("algo", secret="db", config_map="settings"))
        async with replicating(c):

            async def copied(shard: str) -> bool:
                found = await c.shards[shard].get(TEMPLATES, "algo")
                sec = await c.shards[shard].get(SECRETS, "db")
                cm = await c.shards[shard].get(CONFIG_MAPS, "settings")
                wg = await c.shards[shard].get(WORKGROUPS, "default")
                return None not in (found, sec, cm, wg)

            await on_every_shard(c, copied, "the first copies")
            for shard in SHARDS:
                copy = await c.shards[shard].get(TEMPLATES, "algo")
                assert copy is not None
                assert copy["metadata"]["namespace"] == RUNTIME_NS
                assert copy["spec"] == algo["spec"]
                labels = copy["metadata"]["labels"]
                assert labels == {MANAGED_BY_LABEL: MANAGER, OWNER_LABEL: "nexus"}
                assert copy["metadata"]["annotations"][SOURCE_UID] == algo["metadata"]["uid"]
                sec = await c.shards[shard].get(SECRETS, "db")
                assert sec is not None and sec["data"] == db["data"] == {"password": b64("first")}
                assert sec["metadata"]["annotations"][SOURCE_UID] == db["metadata"]["uid"]
                assert await c.shards[shard].get(SECRETS, "unrelated") is None
                # nothing lands in the controller's namespace on a shard
                assert await c.shards[shard].get(TEMPLATES, "algo", namespace="nexus") is None
            await eventually(
                lambda: all(copies_of(s, "template", "in_sync") == 1 for s in SHARDS),
                what="the copies counted in sync",
            )

            # updates of each kind
            await c.put(TEMPLATES, template("algo", "algo2", secret="db", config_map="settings"))
            await c.put(WORKGROUPS, workgroup("default", "shard-a", "second"))
            await c.put(SECRETS, secret("db", password="second"))
            await c.put(CONFIG_MAPS, config_map("settings", LEVEL="info"))

            async def updated(shard: str) -> bool:
                client = c.shards[shard]
                found = spec_of(await client.get(TEMPLATES, "algo"))
                wg = spec_of(await client.get(WORKGROUPS, "default"))
                sec = await client.get(SECRETS, "db")
                cm = await client.get(CONFIG_MAPS, "settings")
                return (
                    found["container"]["image"] == "algo2"
                    and wg["description"] == "second"
                    and sec is not None
                    and sec["data"] == {"password": b64("second")}
                    and cm is not None
                    and cm["data"] == {"LEVEL": "info"}
                )

            await on_every_shard(c, updated, "the updates")

            # a ConfigMap the template stops referencing is deleted from the shards
            await c.put(TEMPLATES, template("algo", "algo2", secret="db"))

            async def unreferenced(shard: str) -> bool:
                return await c.shards[shard].get(CONFIG_MAPS, "settings") is None

            await on_every_shard(c, unreferenced, "the unreferenced ConfigMap deleted")
            assert await c.controller.get(CONFIG_MAPS, "settings") is not None  # the source stays

            # deletions: the template (and with it the Secret only it referenced), the
            # workgroup
            await c.remove(TEMPLATES, "algo")
            await c.remove(WORKGROUPS, "default")

            async def deleted(shard: str) -> bool:
                left = [
                    await c.copies(shard, resource)
                    for resource in (TEMPLATES, WORKGROUPS, SECRETS, CONFIG_MAPS)
                ]
                return left == [{}, {}, {}, {}]

            await on_every_shard(c, deleted, "the deletions")
            await eventually(
                lambda: all(
                    copies_of(s, kind, state) == 0
                    for s in SHARDS
                    for kind in ("template", "secret")
                    for state in ("in_sync", "out_of_sync")
                ),
                what="nothing left to count",
            )


async def test_objects_without_the_mark_are_never_touched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="maintainer.shardcopies")
    async with clusters(tmp_path) as c:
        shard_a = c.shards["shard-a"]
        # on shard-a: a template of the same name made by hand, a Secret of the same name
        # made by another deployment's controller, and an object nobody copies
        foreign = (await shard_a.create_object(TEMPLATES, template("algo", "by-hand"))).object
        other_labels = {MANAGED_BY_LABEL: MANAGER, OWNER_LABEL: "another-deployment"}
        other = secret("db", password="theirs")
        other["metadata"]["labels"] = other_labels
        theirs = (await shard_a.create_object(SECRETS, other)).object
        loose = (await shard_a.create_object(CONFIG_MAPS, config_map("loose", a="1"))).object
        assert foreign and theirs and loose
        before = {
            o["metadata"]["name"]: o["metadata"]["resourceVersion"]
            for o in (foreign, theirs, loose)
        }

        await c.put(SECRETS, secret("db", password="ours"))
        await c.put(TEMPLATES, template("algo", secret="db"))
        async with replicating(c) as replicator:
            replica = replicator.replicas["shard-a"]

            async def copied_to_b() -> bool:
                return (
                    await c.shards["shard-b"].get(TEMPLATES, "algo") is not None
                    and await c.shards["shard-b"].get(SECRETS, "db") is not None
                )

            await eventually(copied_to_b, what="shard-b's copies")
            await eventually(
                lambda: (
                    copies_of("shard-a", "template", "conflict") == 1
                    and copies_of("shard-a", "secret", "conflict") == 1
                ),
                what="the conflicts counted",
            )
            assert copies_of("shard-b", "template", "conflict") == 0
            # several full reconciles later, nothing on shard-a has changed
            passes = replica.last_reconcile
            await eventually(
                lambda: replica.last_reconcile != passes and replica.last_reconcile,
                what="another full reconcile",
            )
            after = {
                o["metadata"]["name"]: o["metadata"]["resourceVersion"]
                for o in (
                    await shard_a.get(TEMPLATES, "algo"),
                    await shard_a.get(SECRETS, "db"),
                    await shard_a.get(CONFIG_MAPS, "loose"),
                )
                if o is not None
            }
            assert after == before
            warned = [r.getMessage() for r in caplog.records if "not made by" in r.getMessage()]
            assert any("template named algo" in m for m in warned), warned
            assert len(warned) == 2, warned  # once each, not at every pass

            # the source deleted: shard-b's copy goes, shard-a's foreign object stays
            await c.remove(TEMPLATES, "algo")

            async def gone_from_b() -> bool:
                return await c.shards["shard-b"].get(TEMPLATES, "algo") is None

            await eventually(gone_from_b, what="shard-b's copy deleted")
            found = await shard_a.get(TEMPLATES, "algo")
            assert found is not None and found["spec"]["container"]["image"] == "by-hand"
            assert found["metadata"]["resourceVersion"] == before["algo"]

            # the other deployment's Secret goes away: ours takes the name (the source
            # still wants it? no: no template references it any more, so nothing is made)
            await c.put(TEMPLATES, template("algo", secret="db"))
            assert (await shard_a.delete_object(SECRETS, "db")).done

            async def ours_now() -> bool:
                made = await shard_a.get(SECRETS, "db")
                return made is not None and made["metadata"]["labels"][OWNER_LABEL] == "nexus"

            await eventually(ours_now, what="the freed name copied to")
            assert copies_of("shard-a", "secret", "conflict") == 0
            loose_now = await shard_a.get(CONFIG_MAPS, "loose")
            assert loose_now is not None
            assert loose_now["metadata"]["resourceVersion"] == before["loose"]


async def test_a_shard_that_was_down_catches_up(tmp_path: Path) -> None:
    async with clusters(tmp_path) as c:
        await c.put(SECRETS, secret("db", password="first"))
        for name in ("t1", "t2", "t3"):
            await c.put(TEMPLATES, template(name, secret="db" if name == "t1" else None))
        async with replicating(c) as replicator:

            async def three(shard: str) -> bool:
                return len(await c.copies(shard, TEMPLATES)) == 3

            await on_every_shard(c, three, "the first copies")
            down = c.cluster["shard-b"]
            await down.stop()  # its port refuses connections now
            last_b = replicator.replicas["shard-b"].last_reconcile

            await c.put(TEMPLATES, template("t4"))
            await c.put(TEMPLATES, template("t1", "changed", secret="db"))
            await c.remove(TEMPLATES, "t2")
            await c.remove(TEMPLATES, "t3")
            await c.put(SECRETS, secret("db", password="second"))

            async def caught_up(shard: str) -> bool:
                copies = await c.copies(shard, TEMPLATES)
                db = await c.shards[shard].get(SECRETS, "db")
                return (
                    set(copies) == {"t1", "t4"}
                    and copies["t1"]["spec"]["container"]["image"] == "changed"
                    and db is not None
                    and db["data"] == {"password": b64("second")}
                )

            await eventually(lambda: caught_up("shard-a"), what="shard-a up to date")
            await eventually(
                lambda: (
                    metric("nexus_configuration_shard_reachable", shard="shard-b") == 0
                    and copies_of("shard-b", "template", "out_of_sync") >= 3
                ),
                what="shard-b counted unreachable and out of sync",
            )
            assert replicator.replicas["shard-b"].last_reconcile == last_b

            await down.start()  # back, with what it held before
            await eventually(lambda: caught_up("shard-b"), what="shard-b caught up")
            await eventually(
                lambda: (
                    replicator.replicas["shard-b"].last_reconcile != last_b
                    and copies_of("shard-b", "template", "out_of_sync") == 0
                    and copies_of("shard-b", "template", "in_sync") == 2
                ),
                what="shard-b counted in sync",
            )
            assert metric("nexus_configuration_shard_reachable", shard="shard-b") == 1
            stamp = metric("nexus_configuration_last_reconcile_timestamp_seconds", shard="shard-b")
            assert stamp == replicator.replicas["shard-b"].last_reconcile


async def test_starting_while_a_shard_is_down_serves_the_others(tmp_path: Path) -> None:
    async with clusters(tmp_path) as c:
        await c.put(WORKGROUPS, workgroup("default", "shard-a"))
        await c.put(TEMPLATES, template("algo"))
        down = c.cluster["shard-b"]
        await down.stop()
        async with replicating(c):

            async def copied(shard: str) -> bool:
                return set(await c.copies(shard, TEMPLATES)) == {"algo"} and set(
                    await c.copies(shard, WORKGROUPS)
                ) == {"default"}

            await eventually(lambda: copied("shard-a"), what="shard-a served")
            await c.put(TEMPLATES, template("later"))

            async def later(shard: str) -> bool:
                return "later" in await c.copies(shard, TEMPLATES)

            await eventually(lambda: later("shard-a"), what="later changes reach shard-a")
            await down.start()
            await on_every_shard(c, later, "shard-b served once it is up")


async def test_nothing_is_written_or_deleted_before_the_controller_is_listed(
    tmp_path: Path,
) -> None:
    async with clusters(tmp_path) as c:
        for name in ("kept", "dropped"):
            await c.put(TEMPLATES, template(name))
        async with replicating(c):

            async def both(shard: str) -> bool:
                return set(await c.copies(shard, TEMPLATES)) == {"kept", "dropped"}

            await on_every_shard(c, both, "the first copies")
        await c.remove(TEMPLATES, "dropped")
        controller = c.cluster["controller"]
        await controller.stop()
        failed = metric(
            "nexus_watch_restarts_total",
            shard="controller",
            resource="nexusalgorithmtemplates",
            reason="failed",
        )
        shard_rv = {s: c.cluster[s].store.rv for s in SHARDS}
        async with replicating(c):
            # the controller's templates cannot be listed: tried and failed several times
            await eventually(
                lambda: (
                    metric(
                        "nexus_watch_restarts_total",
                        shard="controller",
                        resource="nexusalgorithmtemplates",
                        reason="failed",
                    )
                    >= failed + 3
                ),
                what="the controller tried",
            )
            assert {s: c.cluster[s].store.rv for s in SHARDS} == shard_rv  # nothing written
            for shard in SHARDS:
                assert set(await c.copies(shard, TEMPLATES)) == {"kept", "dropped"}
            await controller.start()

            async def only_kept(shard: str) -> bool:
                return set(await c.copies(shard, TEMPLATES)) == {"kept"}

            await on_every_shard(c, only_kept, "the deletion once the controller is listed")


async def test_two_replicators_at_once_neither_duplicate_nor_fight(tmp_path: Path) -> None:
    async with clusters(tmp_path) as c:
        await c.put(SECRETS, secret("db", password="x"))
        for name in ("t1", "t2", "t3"):
            await c.put(TEMPLATES, template(name, secret="db"))
        created = {s: written(s, "template", "created") for s in SHARDS}
        updated = {s: written(s, "template", "updated") for s in SHARDS}
        async with replicating(c) as first, replicating(c) as second:

            async def three(shard: str) -> bool:
                return len(await c.copies(shard, TEMPLATES)) == 3

            await on_every_shard(c, three, "the copies")
            # each copy made once, by one or the other
            for shard in SHARDS:
                assert written(shard, "template", "created") - created[shard] == 3
            settled = {s: c.cluster[s].store.rv for s in SHARDS}
            replicas = [r.replicas[s] for r in (first, second) for s in SHARDS]
            # several full reconciles by both: not a single write more
            for _ in range(2):
                marks = [replica.last_reconcile for replica in replicas]
                await eventually(
                    lambda marks=marks: all(
                        r.last_reconcile != mark for r, mark in zip(replicas, marks, strict=True)
                    ),
                    what="full reconciles by both",
                )
            assert {s: c.cluster[s].store.rv for s in SHARDS} == settled
            assert all(written(s, "template", "updated") == updated[s] for s in SHARDS)


async def test_a_replica_that_does_not_lead_writes_nothing(tmp_path: Path) -> None:
    async with clusters(tmp_path) as c:
        await c.put(TEMPLATES, template("algo"))
        leading = False
        async with replicating(c, leading=lambda: leading) as replicator:
            await eventually(
                lambda: replicator.source.covers(next(iter(replicator.source.objects))),
                what="the source listed",
            )
            await eventually(
                lambda: copies_of("shard-a", "template", "out_of_sync") == 1,
                what="the copy counted missing",
            )
            assert await c.copies("shard-a", TEMPLATES) == {}
            leading = True

            async def copied(shard: str) -> bool:
                return "algo" in await c.copies(shard, TEMPLATES)

            await on_every_shard(c, copied, "the copy once leading")


async def test_copies_changed_or_deleted_on_a_shard_are_restored(tmp_path: Path) -> None:
    async with clusters(tmp_path) as c:
        await c.put(TEMPLATES, template("algo"))
        await c.put(TEMPLATES, template("other"))
        async with replicating(c):

            async def copied(shard: str) -> bool:
                return set(await c.copies(shard, TEMPLATES)) == {"algo", "other"}

            await on_every_shard(c, copied, "the copies")
            shard_a = c.shards["shard-a"]
            edited = await shard_a.get(TEMPLATES, "algo")
            assert edited is not None
            edited["spec"]["container"]["image"] = "tampered"
            edited["metadata"]["labels"]["added-by"] = "someone"
            assert (await shard_a.replace_object(TEMPLATES, edited)).done
            assert (await shard_a.delete_object(TEMPLATES, "other")).done

            async def restored() -> bool:
                algo = await shard_a.get(TEMPLATES, "algo")
                other = await shard_a.get(TEMPLATES, "other")
                return (
                    algo is not None
                    and algo["spec"]["container"]["image"] == "algo"
                    and other is not None
                )

            await eventually(restored, what="the next full reconcile restoring both")
            algo = await shard_a.get(TEMPLATES, "algo")
            assert algo is not None and algo["metadata"]["labels"]["added-by"] == "someone"


async def test_a_field_that_cannot_change_is_changed_by_making_the_copy_anew(
    tmp_path: Path,
) -> None:
    async with clusters(tmp_path) as c:
        await c.put(SECRETS, secret("db", password="first"))
        await c.put(CONFIG_MAPS, {**config_map("frozen", a="1"), "immutable": True})
        await c.put(TEMPLATES, template("algo", secret="db", config_map="frozen"))
        async with replicating(c):

            async def copied(shard: str) -> bool:
                return (
                    await c.shards[shard].get(SECRETS, "db") is not None
                    and await c.shards[shard].get(CONFIG_MAPS, "frozen") is not None
                )

            await on_every_shard(c, copied, "the copies")
            uids = {
                s: (await c.shards[s].get(SECRETS, "db") or {})["metadata"]["uid"] for s in SHARDS
            }
            # the source is made anew with another type (a type never changes in place),
            # and the immutable ConfigMap likewise with other data
            await c.remove(SECRETS, "db")
            await c.put(
                SECRETS,
                {**secret("db", user="u", password="p"), "type": "kubernetes.io/basic-auth"},
            )
            await c.remove(CONFIG_MAPS, "frozen")
            await c.put(CONFIG_MAPS, {**config_map("frozen", a="2"), "immutable": True})

            async def renewed(shard: str) -> bool:
                db = await c.shards[shard].get(SECRETS, "db")
                frozen = await c.shards[shard].get(CONFIG_MAPS, "frozen")
                return (
                    db is not None
                    and db["type"] == "kubernetes.io/basic-auth"
                    and db["metadata"]["uid"] != uids[shard]
                    and frozen is not None
                    and frozen["data"] == {"a": "2"}
                )

            await on_every_shard(c, renewed, "the copies made anew")


async def test_the_controller_cluster_as_its_own_shard_is_left_as_it_is(tmp_path: Path) -> None:
    async with clusters(tmp_path) as c:
        await c.put(SECRETS, secret("db", password="x"))
        await c.put(TEMPLATES, template("algo", secret="db"))
        await c.put(WORKGROUPS, workgroup("default", "shard-0"))
        # a single cluster: the shard is the controller cluster, in the same namespace
        itself = await ShardClient.from_kubeconfig(
            "shard-0", c.cluster["controller"].kubeconfig, "nexus", timeout=2
        )
        try:
            rv = c.cluster["controller"].store.rv
            async with replicating(c, shards={"shard-0": itself}) as replicator:
                replica = replicator.replicas["shard-0"]
                await eventually(
                    lambda: (
                        replica.last_reconcile
                        and copies_of("shard-0", "template", "in_sync") == 1
                        and copies_of("shard-0", "secret", "in_sync") == 1
                        and copies_of("shard-0", "workgroup", "in_sync") == 1
                    ),
                    what="everything counted in step",
                )
                first = replica.last_reconcile
                await eventually(lambda: replica.last_reconcile != first, what="another pass")
            assert c.cluster["controller"].store.rv == rv  # not a single write
        finally:
            await itself.close()


@pytest.mark.slow
async def test_a_standby_maintainer_takes_over_the_copies_without_redoing_them(
    servers: Servers,
) -> None:
    """Two maintainer processes; the leader is killed (no hand-over). The standby's first
    full reconciles find every copy in step and write nothing; then it carries changes."""
    async with clusters(servers.tmp_path) as c, aiohttp.ClientSession() as session:
        shard_dir = servers.tmp_path / "shard-kubeconfigs"
        shard_dir.mkdir()
        for shard in SHARDS:
            shutil.copy(c.cluster[shard].kubeconfig, shard_dir / f"{shard}.kubeconfig")
        s3 = servers.s3
        sections = {
            "log": {"format": "json", "level": "INFO"},
            "postgres": {"dsn": servers.postgres_dsn, "pool_max_size": 4},
            "redis": {"url": servers.redis_url, "key_prefix": servers.redis_prefix},
            "storage": {
                "endpoint_url": s3.endpoint_url,
                "region": s3.region,
                "access_key_id": s3.access_key_id,
                "secret_access_key": s3.secret_access_key,
                "bucket": s3.bucket,
            },
            "shards": {
                "kubeconfig_dir": str(shard_dir),
                "controller_kubeconfig": str(c.cluster["controller"].kubeconfig),
                "controller_namespace": "nexus",
                "runtime_namespace": RUNTIME_NS,
            },
            "replication": {"enabled": True, "interval": 0.5, "max_backoff": 0.3},
        }
        await c.put(SECRETS, secret("db", password="x"))
        for name in ("t1", "t2"):
            await c.put(TEMPLATES, template(name, secret="db"))
        with processes() as children:
            started: dict[str, Process] = {}
            for name in ("first", "second"):
                env = environment(
                    {**sections, "maintainer": {**FAST, "instance": name, "lease_ttl": 1.5}}
                )
                log_path = servers.tmp_path / f"{name}.log"
                children.append(spawn("maintainer", env, log_path, free_port()))
                started[name] = children[-1]
                await wait_ready(session, started[name])
                if name == "first":
                    await eventually(lambda: leading(started["first"]), what="first leads")
            first, second = started["first"], started["second"]

            async def copied(shard: str) -> bool:
                return set(await c.copies(shard, TEMPLATES)) == {"t1", "t2"} and (
                    await c.shards[shard].get(SECRETS, "db") is not None
                )

            await on_every_shard(c, copied, "the copies made by the first leader")
            settled = {s: c.cluster[s].store.rv for s in SHARDS}
            first.kill()

            async def reconciled() -> bool:
                async with session.get(f"http://127.0.0.1:{second.port}/metrics") as answer:
                    text = await answer.text()
                stamps = [
                    line
                    for line in text.splitlines()
                    if line.startswith("nexus_configuration_last_reconcile_timestamp_seconds{")
                ]
                return len(stamps) == 2 and all(float(s.split()[-1]) > 0 for s in stamps)

            await eventually(lambda: leading(second), what="the standby leads")
            await eventually(reconciled, 15, "full reconciles by the new leader")
            assert {s: c.cluster[s].store.rv for s in SHARDS} == settled  # nothing rewritten
            assert not [line for line in second.lines() if line.get("write")]

            await c.put(TEMPLATES, template("t1", "changed", secret="db"))

            async def changed(shard: str) -> bool:
                found = await c.shards[shard].get(TEMPLATES, "t1")
                return found is not None and found["spec"]["container"]["image"] == "changed"

            await on_every_shard(c, changed, "the change carried by the new leader")

            def writes() -> list[tuple[str, str]]:  # logged once the shard has answered
                return sorted(
                    (line["shard"], line["write"]) for line in second.lines() if line.get("write")
                )

            wanted = [("shard-a", "updated"), ("shard-b", "updated")]
            await eventually(lambda: writes() == wanted, what="the new leader's two writes")
            second.terminate()
            assert second.popen.returncode == 0


async def test_a_shard_that_refuses_some_copies_gets_the_others(tmp_path: Path) -> None:
    """RBAC that forbids Secrets on one shard: its templates are still copied, the refusal
    is counted, and the other shard gets everything."""
    created: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        collection = request.path.split("/")[-3] == "namespaces"
        if request.method == "GET" and collection:
            return web.json_response(
                {"kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}
            )
        if request.method == "POST" and request.path.endswith("/secrets"):
            status = {"kind": "Status", "message": 'secrets is forbidden: User "x" cannot create'}
            return web.json_response(status, status=403)
        if request.method == "POST":
            body = await request.json()
            created.append(body["metadata"]["name"])
            body["metadata"]["uid"] = f"uid-{len(created)}"
            return web.json_response(body, status=201)
        return web.json_response({"kind": "Status", "message": "not found"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with clusters(tmp_path) as c, stand_in_shard(app, tmp_path) as kubeconfig:
        refusing = await ShardClient.from_kubeconfig("refusing", kubeconfig, RUNTIME_NS, timeout=2)
        try:
            await c.put(SECRETS, secret("db", password="x"))
            await c.put(TEMPLATES, template("algo", secret="db"))
            rejected = metric(
                "nexus_configuration_failures_total", shard="refusing", reason="rejected"
            )
            shards = {**c.shards, "refusing": refusing}
            async with replicating(c, shards=shards):
                await eventually(lambda: "algo" in created, what="the template copied")
                await eventually(
                    lambda: (
                        copies_of("refusing", "secret", "out_of_sync") == 1
                        and copies_of("refusing", "template", "in_sync") == 1
                        and metric(
                            "nexus_configuration_failures_total",
                            shard="refusing",
                            reason="rejected",
                        )
                        > rejected
                    ),
                    what="the refusal counted",
                )

                async def copied(shard: str) -> bool:
                    return await c.shards[shard].get(SECRETS, "db") is not None

                await on_every_shard(c, copied, "the other shards served")
            assert "db" not in created
        finally:
            await refusing.close()


async def test_a_reference_the_controller_lacks_is_reported_then_copied_when_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="maintainer.configsource")
    async with clusters(tmp_path) as c:
        await c.put(TEMPLATES, template("algo", secret="later", config_map="absent"))
        async with replicating(c):
            await eventually(
                lambda: (
                    metric("nexus_configuration_missing_sources", kind="secret") == 1
                    and metric("nexus_configuration_missing_sources", kind="configmap") == 1
                ),
                what="the missing references counted",
            )
            logged = [r for r in caplog.records if "lacks" in r.getMessage()]
            assert sorted(r.object for r in logged) == ["absent", "later"]  # type: ignore[attr-defined]
            assert all(r.templates == ["algo"] for r in logged)  # type: ignore[attr-defined]
            await c.put(SECRETS, secret("later", k="v"))

            async def copied(shard: str) -> bool:
                return await c.shards[shard].get(SECRETS, "later") is not None

            await on_every_shard(c, copied, "the Secret copied once it exists")
            assert metric("nexus_configuration_missing_sources", kind="secret") == 0
