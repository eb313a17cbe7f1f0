"""Nexus on one machine, for development, tests and benchmarks — never in production.

* :mod:`nexus_dev.cluster` — a Kubernetes API emulator with a simulated kubelet, one per
  shard (``nexus devcluster``);
* :mod:`nexus_dev.servers` — throwaway real PostgreSQL, Redis and S3 (SeaweedFS) servers;
* :mod:`nexus_dev.stack` — the Nexus processes of a local system and the example catalog;
* :mod:`nexus_dev.restarts` — each process of a local system restarted as kubelet would;
* :mod:`nexus_dev.status` — the status file of a local system, and ``nexus dev status``;
* :mod:`nexus_dev.cli` — ``nexus dev``: all of the above, started and stopped as one.

The production packages (``nexus``, ``receiver``, ``maintainer``) never import this one
(``.importlinter``), and neither the production wheel nor its image contains it.
"""
