"""Python client for the Nexus API."""
