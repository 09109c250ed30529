"""A balance plan: replicas to copy and how every source's tokens are routed, plus its metrics.

Stored compactly as coordinate lists, never as a dense ``[G, E, G]`` tensor:

- ``replicas [R, 4]`` int64 columns (layer, expert, source rank, destination rank): copy the
  expert's weights from a native host into a spare slot of the destination for that layer.
- ``route_idx [N, 4]`` int64 columns (layer, source rank, expert, destination rank) and
  ``route_tok [N]`` float64: how many of the source's tokens for that expert the destination
  processes. Local tokens appear with source == destination.

Routes are listed only for the (layer, expert) pairs a solver split or chose to list; an unlisted
expert has one host and gets every token (:mod:`probe_planner.routes`). :attr:`Plan.full_routes`
and :meth:`Plan.layer` give every route explicitly.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import plan_check
from .budget import Budget
from .cost import CostParams, Metrics, evaluate, lower_bound_us
from .errors import PlanInvalidError
from .routes import expand_routes
from .topology import Topology

LAYER, EXPERT, SRC, DST = range(4)  # replica columns
R_LAYER, R_SRC, R_EXPERT, R_DST = range(4)  # route columns
_REL_TOL = 1e-9


@dataclass(frozen=True)
class LayerPlan:
    """One layer of a plan: replicas ``[R, 3]`` (expert, src, dst); routes ``[N, 3]`` (src, expert,
    dst) with tokens ``[N]``; its makespan under the cost model. From :meth:`Plan.layer` every route
    is explicit; the layers solvers work on may list only some experts' routes (an unlisted expert's
    tokens all go to its sole host, :mod:`probe_planner.routes`)."""

    replicas: np.ndarray
    routes: np.ndarray
    tokens: np.ndarray
    makespan_us: float = float("nan")


class Plan:
    """A solver's answer for ``L`` layers; see the module docstring for the layout.

    ``loads`` is the ``[L, G, E]`` problem the plan answers; ``validate()`` checks every invariant;
    metrics come from the one cost model (``probe_planner.cost``).
    """

    def __init__(self, topology: Topology, budget: Budget, loads: np.ndarray, replicas: np.ndarray,
                 route_idx: np.ndarray, route_tok: np.ndarray, *, solver: str, solve_time_s: float,
                 info: dict | None = None, loads_checked: bool | None = None) -> None:
        """Raises :class:`PlanInvalidError` naming the problem when an array is malformed: loads not a
        finite, ``>= 0`` ``[L, G, E]`` array matching the topology; replicas not ``[R, 4]`` or
        route_idx not ``[N, 4]`` whole-number indices; route_tok not ``[N]`` numbers. The invariants
        between them are :meth:`validate`'s. ``loads_checked``: whether the loads are integral, when
        the front door (:func:`probe_planner.solve`) has already checked them — the scan is skipped."""
        self.topology = topology
        self.budget = budget
        self.loads = _loads_array(loads, topology)
        self.replicas = _index_array(replicas, "replica", "replicas", "(layer, expert, source rank, destination rank)")
        self.route_idx = _index_array(route_idx, "route", "route_idx", "(layer, source rank, expert, destination rank)")
        self.route_tok = _token_array(route_tok, self.route_idx.shape[0])
        plan_check.prepare()
        bad, integral = (-1, loads_checked) if loads_checked is not None else plan_check.scan_loads(self.loads)[:2]
        if bad >= 0:
            at = np.unravel_index(bad, self.loads.shape)
            raise PlanInvalidError(f"loads[{', '.join(map(str, at))}] = {self.loads[at]} (loads must be finite, >= 0)")
        self.__dict__["integral"] = bool(integral)  # the cached property, known from the same pass
        self.solver = solver
        self.solve_time_s = float(solve_time_s)
        self.info = dict(info or {})

    # ---- shape -------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.loads.shape[0]

    @cached_property
    def integral(self) -> bool:
        """Whether the loads are whole tokens (then every route must be)."""
        return bool(np.all(self.loads == np.floor(self.loads)))

    def layer(self, index: int) -> LayerPlan:
        """The replicas and every route (implicit ones included) of one layer."""
        if not 0 <= index < self.num_layers:
            raise IndexError(f"layer {index} out of range [0, {self.num_layers})")
        idx, tok = self.full_routes
        rm = self.replicas[:, LAYER] == index
        qm = idx[:, R_LAYER] == index
        return LayerPlan(self.replicas[rm, 1:], idx[qm, 1:], tok[qm], float(self.metrics.layer_makespan_us[index]))

    @cached_property
    def full_routes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(route_idx [N, 4], route_tok [N])`` with every route explicit, the unlisted experts'
        included, sorted by (layer, source, expert, destination)."""
        return expand_routes(self.topology.native, self.loads, self.route_idx, self.route_tok)

    # ---- metrics -----------------------------------------------------------------------------
    @cached_property
    def metrics(self) -> Metrics:
        return evaluate(self.topology, self.loads, self.route_idx, self.route_tok, self.replicas)

    @cached_property
    def layer_lower_bound_us(self) -> np.ndarray:
        return lower_bound_us(self.topology, self.loads, self.budget.windows(self.topology.num_ranks))

    @property
    def makespan_us(self) -> float:
        """Sum over layers of dispatch + compute + combine (each the slowest rank's time)."""
        return self.metrics.makespan_us

    @property
    def lower_bound_us(self) -> float:
        """A makespan no valid plan for these loads can beat (sum over layers)."""
        return float(self.layer_lower_bound_us.sum())

    @property
    def imbalance_ratio(self) -> float:
        """Max over mean tokens processed per rank (mean over layers)."""
        return self.metrics.imbalance_ratio

    @property
    def status(self) -> str:
        """``"optimal"`` (proven), ``"feasible"`` (an optimizer's incumbent; see :attr:`gap`) or
        ``"heuristic"`` (no optimality claim)."""
        return str(self.info.get("status", "heuristic"))

    @property
    def message(self) -> str:
        """Why the solver stopped: search complete, optimal, time limit, budget too short for a
        phase (and what was returned instead), ..."""
        return str(self.info.get("message", ""))

    @property
    def bound_us(self) -> float:
        """The best lower bound known on the makespan: the solver's (LP/MILP) or the analytic one."""
        return max(float(self.info.get("bound_us", -np.inf)), self.lower_bound_us)

    @property
    def gap(self) -> float:
        """``(makespan - bound) / makespan``: how far from optimal the plan can at most be."""
        mk = self.makespan_us
        return 0.0 if mk <= 0 else max(0.0, (mk - self.bound_us) / mk)

    @property
    def num_replicas(self) -> int:
        return int(self.replicas.shape[0])

    def summary(self) -> str:
        """A short human-readable report."""
        m = self.metrics
        L, G, E = self.loads.shape
        lb = self.lower_bound_us
        return "\n".join([
            f"solver {self.solver}: {L} layer(s), {G} ranks, {E} experts, solved in {self.solve_time_s * 1e3:.2f} ms, "
            f"status {self.status}",
            f"  makespan     {self.makespan_us:10.1f} us  (bound {self.bound_us:.1f} us, gap {self.gap:.2%}; analytic bound {lb:.1f} us)",
            f"  phases       dispatch {m.dispatch_us.sum():.1f} + compute {m.compute_us.sum():.1f} + combine {m.dispatch_us.sum():.1f} us",
            f"  imbalance    {self.imbalance_ratio:.3f} tokens max/mean, {m.compute_imbalance:.3f} compute max/mean",
            f"  replicas     {self.num_replicas} added",
        ])

    def __repr__(self) -> str:
        return (f"Plan(solver={self.solver!r}, layers={self.num_layers}, makespan_us={self.makespan_us:.1f}, "
                f"replicas={self.num_replicas})")

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> Plan:
        """Check every invariant (:mod:`probe_planner.plan_check`, one compiled pass); raise
        :class:`PlanInvalidError` naming the first violation."""
        code, a, b, c, d, x, y = self._check_result()
        if code != plan_check.OK:
            raise PlanInvalidError(self._violation(code, a, b, c, d, x, y))
        return self

    def _check_result(self) -> tuple[int, int, int, int, int, float, float]:
        """:func:`plan_check.check_plan`'s raw answer ``(code, a, b, c, d, x, y)`` for this plan."""
        topo = self.topology
        L, G, E = self.loads.shape
        if (G, E) != (topo.num_ranks, topo.num_experts):
            raise PlanInvalidError(f"loads are [L, {G}, {E}] but the topology has {topo.num_ranks} ranks, {topo.num_experts} experts")
        rep, ri, rt = self.replicas, self.route_idx, self.route_tok
        if ri.shape[0] != rt.shape[0]:
            raise PlanInvalidError(f"{ri.shape[0]} route entries but {rt.shape[0]} token counts")
        native, n_native, unit_intra, unit_inter = _topology_facts(topo)
        plan_check.prepare()
        return plan_check.check_plan(
            _c(self.loads), _c(rep), _c(ri), _c(rt), native, n_native, topo.ranks_per_node, topo.slots,
            _windows(self.budget, G), unit_intra, unit_inter, self.integral, _REL_TOL)

    def _violation(self, code: int, a: int, b: int, c: int, d: int, x: float, y: float) -> str:
        """The message for :func:`plan_check.check_plan`'s answer (the fields' meaning is per code)."""
        rep, ri = self.replicas, self.route_idx
        f = dict(a=a, b=b, c=c, d=d, x=x, y=y, slots=self.topology.slots,
                 rep_a=rep[a].tolist() if 0 <= a < rep.shape[0] else None,
                 ri_a=ri[a].tolist() if 0 <= a < ri.shape[0] else None)
        if code == plan_check.WINDOW:
            _, _, unit_intra, unit_inter = _topology_facts(self.topology)
            f.update(kind=("receives", "sends")[c // 2] + " " + ("intra-node", "inter-node")[c % 2],
                     taking=d * (unit_intra, unit_inter)[c % 2], win=_windows(self.budget, self.topology.num_ranks)[b])
        if code not in _MESSAGES:
            raise AssertionError(f"unknown plan_check code {code}")
        return _MESSAGES[code].format(**f)


_MESSAGES = {  # plan_check's codes -> what the plan breaks, filled by Plan._violation
    plan_check.RANGE_REPLICA: "replica {a} = {rep_a}: column {b} outside [0, {c})",
    plan_check.RANGE_ROUTE: "route {a} = {ri_a}: column {b} outside [0, {c})",
    plan_check.TOKENS: "route {a} = {ri_a} carries {x} tokens (must be finite, >= 0)",
    plan_check.SRC_NOT_NATIVE: "replica {rep_a}: source rank does not natively host the expert",
    plan_check.DST_NATIVE: "replica {rep_a}: destination already hosts the expert natively",
    plan_check.COPIED_TWICE: "expert {b} copied twice to rank {c} in layer {a}",
    plan_check.SLOTS: "rank {b} receives {c} replicas in layer {a}, slots={slots}",
    plan_check.UNLISTED_SPLIT: "layer {a}, expert {b}: {c} hosts but no routes listed (only an expert with one host may "
                               "leave its routes implicit)",
    plan_check.WINDOW: "rank {b} in layer {a} {kind} {d} replica copies taking {taking:.3f} us > window {win:.3f} us",
    plan_check.NOT_HELD: "route {ri_a} sends tokens to a rank that does not hold the expert",
    plan_check.REPEAT: "route entries repeat a (layer, source, expert, destination): entries {a} and {b} are both {ri_a}",
    plan_check.CONSERVATION: "layer {a}, source {b}, expert {c}: routes carry {x} tokens, loads say {y}",
    plan_check.UNCOVERED: "layer {a}, source {b}, expert {c}: routes carry 0 tokens, loads say {y}",
    plan_check.FRACTIONAL: "loads are integral but route {ri_a} carries {x} tokens",
}


_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WINDOWS: dict[tuple[float, int], np.ndarray] = {}


def _topology_facts(topo: Topology) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(native [G, E] C-contiguous, native host count per expert [E], copy_intra_us, copy_inter_us)``,
    computed once per topology (a frozen object whose ``native`` is read-only)."""
    try:
        facts = _FACTS.get(topo)
    except TypeError:  # not weak-referenceable or hashable: compute every time
        facts = None
    if facts is None:
        native = _c(topo.native)
        n_native = native.sum(axis=0).astype(np.int64)
        n_native.setflags(write=False)
        p = CostParams.from_topology(topo)
        facts = (native, n_native, p.copy_intra_us, p.copy_inter_us)
        try:
            _FACTS[topo] = facts
        except TypeError:
            pass
    return facts


def _windows(budget: Budget, num_ranks: int) -> np.ndarray:
    """``budget.windows(num_ranks)``, shared (read-only) across calls when the window is one number."""
    w = budget.window_us
    if not isinstance(w, float):
        return budget.windows(num_ranks)
    key = (w, num_ranks)
    win = _WINDOWS.get(key)
    if win is None:
        if len(_WINDOWS) >= 256:
            _WINDOWS.clear()
        win = budget.windows(num_ranks)
        win.setflags(write=False)
        _WINDOWS[key] = win
    return win


def _c(arr: np.ndarray) -> np.ndarray:
    """``arr`` itself when C-contiguous (what the compiled checker takes), else a contiguous copy."""
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)


def _plain(value, dtype: np.dtype, ndim: int) -> bool:
    """Whether ``value`` is already what the checker takes (the solvers' output): no work to do."""
    return type(value) is np.ndarray and value.ndim == ndim and (value.dtype is dtype or value.dtype == dtype) \
        and value.flags.c_contiguous


def _numeric(value, what: str) -> np.ndarray:
    if isinstance(value, np.ma.MaskedArray):
        raise PlanInvalidError(f"{what} must be a plain array, not a masked array")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise PlanInvalidError(f"{what} is not a numeric array: {exc}") from None
    if arr.dtype.kind not in "iuf":
        raise PlanInvalidError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _loads_array(value, topology: Topology) -> np.ndarray:
    """``[L, G, E]`` float64 loads (finite and ``>= 0`` is checked by the caller's compiled scan)."""
    plain = _plain(value, _F64, 3)
    arr = value if plain else _numeric(value, "loads")
    g, e = topology.num_ranks, topology.num_experts
    if arr.ndim != 3 or arr.shape[1] != g or arr.shape[2] != e:
        raise PlanInvalidError(f"loads have shape {list(arr.shape)}, expected [L, G={g}, E={e}] for the topology")
    return arr if plain else np.ascontiguousarray(arr, dtype=np.float64)


_INDEX_LIMIT = 2.0 ** 53  # floats beyond it are not exact integers


def _index_array(value, row: str, what: str, columns: str) -> np.ndarray:
    """``[N, 4]`` int64 indices; floats are accepted only when they are whole numbers."""
    if _plain(value, _I64, 2) and value.shape[1] == 4:
        return value
    arr = _numeric(value, what)
    if arr.size == 0 and (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[0] == 0)):
        return np.zeros((0, 4), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise PlanInvalidError(f"{what} have shape {list(arr.shape)}, expected [N, 4] {columns}")
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(arr) & (arr == np.floor(arr)) & (np.abs(arr) <= _INDEX_LIMIT)
        if not whole.all():
            i, c = np.argwhere(~whole)[0]
            raise PlanInvalidError(f"{row} {i} = {arr[i].tolist()}: column {c} holds {float(arr[i, c])!r}, not a whole-number index")
    elif arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        i, c = np.argwhere(arr > np.iinfo(np.int64).max)[0]
        raise PlanInvalidError(f"{row} {i} = {arr[i].tolist()}: column {c} outside the int64 range")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _token_array(value, num_routes: int) -> np.ndarray:
    """``[N]`` float64 route tokens (finite and ``>= 0`` is :meth:`Plan.validate`'s check)."""
    plain = _plain(value, _F64, 1)
    arr = value if plain else _numeric(value, "route_tok")
    if arr.size == 0 and arr.ndim <= 2:
        arr = arr.reshape(0)
    if arr.ndim != 1:
        raise PlanInvalidError(f"route_tok has shape {list(arr.shape)}, expected [N] (tokens per route entry)")
    if arr.shape[0] != num_routes:
        raise PlanInvalidError(f"{num_routes} route entries but {arr.shape[0]} token counts")
    return arr if plain else np.ascontiguousarray(arr, dtype=np.float64)
