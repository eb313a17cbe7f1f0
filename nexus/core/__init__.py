"""Shared core: configuration, run model, stores, queues, shard clients, lifecycle."""
