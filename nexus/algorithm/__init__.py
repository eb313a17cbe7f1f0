"""Helpers for writing algorithm containers that follow the Nexus contract."""
