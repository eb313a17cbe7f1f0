"""The maintainer service: watches every shard and sweeps the checkpoint store."""
