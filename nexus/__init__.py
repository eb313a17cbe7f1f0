"""Nexus: a Kubernetes-native, high-throughput, asynchronous request-scheduling proxy."""
