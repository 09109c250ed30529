"""The planner's error hierarchy: every bad input raises a subclass of :class:`PlannerError`.

All of them subclass ``ValueError`` so callers that already catch ``ValueError`` keep working; each
message names the offending value and what was expected.
"""

from __future__ import annotations


class PlannerError(ValueError):
    """Base class of every error probe-planner raises for bad input."""


class LoadsError(PlannerError):
    """Loads are malformed: wrong shape, negative, NaN or infinite."""


class TopologyError(PlannerError):
    """A topology or model shape is inconsistent (ranks, bandwidths, placement, ...)."""


class BudgetError(PlannerError):
    """A budget is malformed (negative window, non-positive time limit, wrong length)."""


class CardError(PlannerError):
    """A model or cluster card cannot be found or parsed."""


class SolverError(PlannerError):
    """An unknown solver name or option."""


class PlanInvalidError(PlannerError):
    """A plan breaks an invariant (tokens lost, routed to a non-host, slots or window exceeded)."""


class PlanFileError(PlannerError):
    """A saved plan file is corrupt, truncated, or does not match what it claims to hold."""


class OutputError(PlannerError):
    """An output path cannot be written (missing or unwritable directory, bad suffix)."""


class TraceError(PlannerError):
    """A routing trace is missing or does not have the expected layout."""


class MapError(PlannerError):
    """An expert map (a long-lived placement, in an engine's format) is malformed or does not match
    the cluster: wrong slot or layer count, an expert missing, a duplicate on a rank."""


class OffloadError(PlannerError):
    """An offload-planning input or schedule is malformed: a cache too small for one layer, a
    schedule whose cache would overflow, a negative bandwidth, activations of the wrong shape."""


class PlacementError(PlannerError):
    """A long-lived placement request is malformed: slots, reserve, move budget or current placement."""
