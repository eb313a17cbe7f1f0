"""The light side of Nexus: what clients and algorithm containers install, without the server.

It depends on httpx (and sniffio), as ranges, never pins, so any Python 3.11+ image can carry it:

* :mod:`nexus_sdk.client` (``AsyncClient``) and :mod:`nexus_sdk.syncclient` (``Client``) —
  the HTTP API (DESIGN §2, §8): submit one run or many, wait, read results, cancel, list
  a tag and follow its progress; their failures are :mod:`nexus_sdk.errors`, their answers
  :mod:`nexus_sdk.models`;
* :mod:`nexus_sdk.algorithm` — the algorithm side of the contract (DESIGN §3): read the
  input, start child runs, report success or failure, retrying through passing outages
  (:mod:`nexus_sdk.retrying`);
* :mod:`nexus_sdk.cli` — the ``nexus`` command, which runs the subcommands every installed
  Nexus distribution registers (the server's services, the development tools, and the
  client commands of this one);
* :mod:`nexus_sdk.examples` — example algorithms (``python -m nexus_sdk.examples echo …``).
"""
