"""Example algorithms: ``python -m nexus_sdk.examples <name>``; ``nexus dev`` installs them."""
