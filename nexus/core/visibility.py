"""Which runs a caller may see: the one place that decides it (DESIGN §7, invariant 6).

A caller sees, reads (status, result, metadata, input), lists (by tag) and cancels only the
runs it submitted, unless a grant widens that to every caller's runs of some algorithms, or
of all. A :class:`Viewer` says so, and every read of the checkpoint store that answers a
client takes one: the store adds ``caller = <viewer>`` to its query where the viewer is
limited (:meth:`Viewer.owner`), so the decision costs no extra round trip, and a run the
viewer may not see is read exactly as a run that does not exist — the route answers the
same 404 with the same words, and nothing tells the two apart.

Guarantees:

* **One decision.** :meth:`Viewer.owner` (for one algorithm, the store's filter) and
  :meth:`Viewer.may_see` (for a checkpoint already in hand) say the same thing; no route
  compares callers itself.
* **Refused is absent.** Nothing a viewer is refused is returned by the store, so no answer
  can carry it, whatever the route does with what it reads.
* **Tags are per caller.** A listing by tag holds the viewer's own runs of that tag (a
  grant's holder: every caller's).
* **A run's credential sees its children only.** A viewer that is a running algorithm
  (:attr:`Viewer.below`: a run's credential, which anyone who reads its Job can read too)
  sees the runs started as children of its run, and no other run of its caller.
* **Signed links are capabilities.** A signed URL already handed out (an input, a result)
  is not checked against a viewer: whoever holds it may use it until it expires, as with
  S3's own presigned URLs. Only who may be handed one is decided here.

Background work that acts for the system rather than a caller (dispatch, schedules,
completions, the maintainer) reads with :data:`SYSTEM`, which sees every run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

ALL = "*"
"""A grant naming every algorithm."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """A caller, and the algorithms whose runs it may see whoever submitted them."""

    caller: str
    grants: frozenset[str] = frozenset()
    """Algorithms whose every run this viewer sees; ``*`` for all of them."""
    below: tuple[str, str] | None = None
    """(algorithm, request id) of a run: the viewer then sees that run's children only."""

    @property
    def parent(self) -> str | None:
        """The ``parent`` (JSON) of the only runs this viewer sees, or ``None`` for any:
        what the store filters its rows by, besides :meth:`owner`."""
        if self.below is None:
            return None
        return orjson.dumps({"requestId": self.below[1], "algorithmName": self.below[0]}).decode()

    def owner(self, algorithm: str) -> str | None:
        """The caller whose runs of ``algorithm`` this viewer may see, or ``None`` for
        every caller's: what the store filters its rows by."""
        if ALL in self.grants or algorithm in self.grants:
            return None
        return self.caller

    def may_see(self, algorithm: str, caller: str, parent: Mapping[str, str] | None = None) -> bool:
        """Whether a run of ``algorithm`` submitted by ``caller`` below ``parent`` is
        visible."""
        owner = self.owner(algorithm)
        if self.below is not None and (
            parent is None or (parent.get("algorithmName"), parent.get("requestId")) != self.below
        ):
            return False
        return owner is None or owner == caller

    @property
    def sees_everything(self) -> bool:
        return ALL in self.grants


SYSTEM = Viewer("", frozenset({ALL}))
"""Nexus itself: sees every run (for work no caller asked for directly)."""
