"""The light side of Nexus: what clients and algorithm containers install, without the server.

Standard library only, so any Python 3.11+ image can carry it:

* :mod:`nexus_sdk.cli` — the ``nexus`` command, which runs the subcommands every installed
  Nexus distribution registers (the server's services, the development tools);
* :mod:`nexus_sdk.algorithm` — the algorithm side of the contract (DESIGN §3): read the
  input, report success or failure;
* :mod:`nexus_sdk.examples` — example algorithms (``python -m nexus_sdk.examples echo …``).

The client library for the HTTP API (DESIGN §8) and the client commands (``nexus run``,
``submit``, ``wait``, ``status``, ``result``, ``cancel``) belong here as well.
"""
