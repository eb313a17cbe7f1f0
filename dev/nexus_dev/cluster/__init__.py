"""A local Kubernetes API emulator with a simulated kubelet, one per shard.

Development, tests, benchmarks and ``nexus dev`` talk to it with the real client
(kubernetes-asyncio) over the real REST API. The pieces, from the wire inwards:

* :mod:`nexus.core.httpserver`, :mod:`.routing` — HTTP/1.1 in
  and out, paths to handlers;
* :mod:`.apiserver`, :mod:`.watchstreams`, :mod:`.discovery` — paths, verbs, watches, answers;
* :mod:`.fairness` — emulated API Priority and Fairness (429) and request metrics;
* :mod:`.store` — objects, the shared ``resourceVersion``, watch history and fan-out;
* :mod:`.selectors`, :mod:`.validation`, :mod:`.configdata`, :mod:`.patching`,
  :mod:`.statuses` — what the server checks, fills in and answers;
* :mod:`.jobcontroller`, :mod:`.deletion`, :mod:`.events` — Job controller, garbage
  collector, Events;
* :mod:`.kubelet`, :mod:`.podstatus`, :mod:`.simulation`, :mod:`.processes` — pods,
  their status and their containers (simulated ones call out over the pooled connections
  of :mod:`nexus.core.httpcalls`);
* :mod:`.emulators`, :mod:`.cli`, :mod:`.heap` — running shards in-process or as
  ``nexus devcluster`` (which keeps the garbage collector off the store);
* :mod:`.compiled` — the hot modules compiled with mypyc, when built (never when stale).
"""

from nexus_dev.cluster.compiled import use_sources_if_changed

use_sources_if_changed()  # before any compiled module is imported

from nexus_dev.cluster.emulators import DevCluster, Shard, ShardSpec  # noqa: E402
from nexus_dev.cluster.fairness import Limits  # noqa: E402

__all__ = ["DevCluster", "Limits", "Shard", "ShardSpec"]
