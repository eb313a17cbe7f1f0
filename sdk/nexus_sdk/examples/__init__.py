"""Example algorithms installed by ``nexus dev``."""
