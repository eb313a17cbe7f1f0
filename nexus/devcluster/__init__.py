"""A local Kubernetes API emulator with a simulated kubelet, one per shard."""
