"""Throwaway real servers on loopback: PostgreSQL, Redis and S3 (SeaweedFS).

* :mod:`.services` — all three started in parallel, or the running ones the environment
  names (what ``nexus dev``, the tests and the benchmarks use);
* :mod:`.databases` — the life cycle every server shares, PostgreSQL and Redis;
* :mod:`.s3` — SeaweedFS as an S3 server that enforces signatures;
* :mod:`.supervision` — child processes, binaries, free ports and cleanup.
"""
