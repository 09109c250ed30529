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

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .budget import Budget
from .cost import CostParams, Metrics, evaluate, lower_bound_us
from .errors import PlanInvalidError
from .routes import expand_routes, listed_pairs
from .topology import Topology
from .window import copies_fit_np

LAYER, EXPERT, SRC, DST = range(4)  # replica columns
R_LAYER, R_SRC, R_EXPERT, R_DST = range(4)  # route columns
_REL_TOL = 1e-9


@dataclass(frozen=True)
class LayerPlan:
    """One layer of a plan: replicas ``[R, 3]`` (expert, src, dst); every route ``[N, 3]``
    (src, expert, dst), implicit ones included, with tokens ``[N]``."""

    replicas: np.ndarray
    routes: np.ndarray
    tokens: np.ndarray


class Plan:
    """A solver's answer for ``L`` layers; see the module docstring for the layout.

    ``loads`` is the ``[L, G, E]`` problem the plan answers; ``validate()`` checks every invariant;
    metrics come from the one cost model (``probe_planner.cost``).
    """

    def __init__(self, topology: Topology, budget: Budget, loads: np.ndarray, replicas: np.ndarray,
                 route_idx: np.ndarray, route_tok: np.ndarray, *, solver: str, solve_time_s: float,
                 info: dict | None = None) -> None:
        self.topology = topology
        self.budget = budget
        self.loads = np.asarray(loads, dtype=np.float64)
        self.replicas = np.asarray(replicas, dtype=np.int64).reshape(-1, 4)
        self.route_idx = np.asarray(route_idx, dtype=np.int64).reshape(-1, 4)
        self.route_tok = np.asarray(route_tok, dtype=np.float64).reshape(-1)
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
        return LayerPlan(self.replicas[rm, 1:], idx[qm, 1:], tok[qm])

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
        """Check every invariant; raise :class:`PlanInvalidError` naming the first violation."""
        topo = self.topology
        L, G, E = self.loads.shape
        if (G, E) != (topo.num_ranks, topo.num_experts):
            raise PlanInvalidError(f"loads are [L, {G}, {E}] but the topology has {topo.num_ranks} ranks, {topo.num_experts} experts")
        rep, ri, rt = self.replicas, self.route_idx, self.route_tok
        if ri.shape[0] != rt.shape[0]:
            raise PlanInvalidError(f"{ri.shape[0]} route entries but {rt.shape[0]} token counts")
        for name, arr, cols in (("replica", rep, (L, E, G, G)), ("route", ri, (L, G, E, G))):
            for c, hi in enumerate(cols):
                bad = np.flatnonzero((arr[:, c] < 0) | (arr[:, c] >= hi))
                if bad.size:
                    raise PlanInvalidError(f"{name} {bad[0]} = {arr[bad[0]].tolist()}: column {c} outside [0, {hi})")
        if not np.isfinite(rt).all() or (rt < 0).any():
            i = np.flatnonzero(~np.isfinite(rt) | (rt < 0))[0]
            raise PlanInvalidError(f"route {i} = {ri[i].tolist()} carries {rt[i]} tokens (must be finite, >= 0)")

        native = topo.native
        lay, e, s, d = rep.T
        bad = np.flatnonzero(~native[s, e])
        if bad.size:
            raise PlanInvalidError(f"replica {rep[bad[0]].tolist()}: source rank does not natively host the expert")
        bad = np.flatnonzero(native[d, e])
        if bad.size:
            raise PlanInvalidError(f"replica {rep[bad[0]].tolist()}: destination already hosts the expert natively")
        key = (lay * E + e) * G + d
        uniq, counts = np.unique(key, return_counts=True)
        if (counts > 1).any():
            k = uniq[counts > 1][0]
            raise PlanInvalidError(f"expert {k // G % E} copied twice to rank {k % G} in layer {k // (G * E)}")
        per_slot = np.bincount(lay * G + d, minlength=L * G)
        if (per_slot > topo.slots).any():
            k = int(np.argmax(per_slot))
            raise PlanInvalidError(f"rank {k % G} receives {per_slot[k]} replicas in layer {k // G}, slots={topo.slots}")
        n_hosts = np.broadcast_to(native.sum(axis=0), (L, E)).copy()
        np.add.at(n_hosts, (lay, e), 1)
        listed = listed_pairs(ri, L, E)
        load_le = self.loads.sum(axis=1)  # [L, E]
        split = ~listed & (n_hosts != 1) & (load_le > 0)
        if split.any():
            lo, eo = np.argwhere(split)[0]
            raise PlanInvalidError(f"layer {lo}, expert {eo}: {n_hosts[lo, eo]} hosts but no routes listed "
                                   "(only an expert with one host may leave its routes implicit)")
        win = self.budget.windows(G)
        node = topo.node_of
        inter = (node[s] != node[d]).astype(np.int64)
        counts = np.zeros((L, G, 4))  # copies in intra, in inter, out intra, out inter
        np.add.at(counts, (lay, d, inter), 1.0)
        np.add.at(counts, (lay, s, 2 + inter), 1.0)
        p = CostParams.from_topology(topo)
        units = np.array([p.copy_intra_us, p.copy_inter_us, p.copy_intra_us, p.copy_inter_us])
        over = ~copies_fit_np(counts, units, win[None, :, None])
        if over.any():
            lo, r, k = np.argwhere(over)[0]
            kind = ("receives", "sends")[k // 2] + " " + ("intra-node", "inter-node")[k % 2]
            raise PlanInvalidError(f"rank {r} in layer {lo} {kind} {int(counts[lo, r, k])} replica copies taking "
                                   f"{counts[lo, r, k] * units[k]:.3f} us > window {win[r]:.3f} us")

        rl, rs, re_, rd = ri.T
        held = native[rd, re_] | np.isin((rl * E + re_) * G + rd, key)
        bad = np.flatnonzero(~held)
        if bad.size:
            raise PlanInvalidError(f"route {ri[bad[0]].tolist()} sends tokens to a rank that does not hold the expert")
        rkey = ((rl * G + rs) * E + re_) * G + rd
        if np.unique(rkey).size != rkey.size:
            raise PlanInvalidError("route entries repeat a (layer, source, expert, destination)")
        # conservation, listed pairs only: each (layer, source, expert) with entries carries its load ...
        pk, inv = np.unique((rl * G + rs) * E + re_, return_inverse=True)
        sums = np.bincount(inv.reshape(-1), weights=rt, minlength=pk.size)
        want = self.loads.reshape(-1)[pk]
        off = np.flatnonzero(np.abs(sums - want) > _REL_TOL * np.maximum(1.0, want))
        if off.size:
            k = pk[off[0]]
            raise PlanInvalidError(f"layer {k // (G * E)}, source {k // E % G}, expert {k % E}: routes carry "
                                   f"{sums[off[0]]} tokens, loads say {want[off[0]]}")
        # ... and no source with tokens for a listed expert is left without entries
        covered = np.bincount((pk // (G * E)) * E + pk % E, weights=want > 0, minlength=L * E).reshape(L, E)
        needed = np.count_nonzero(self.loads > 0, axis=1)
        gap = listed & (covered < needed)
        if gap.any():
            lo, eo = np.argwhere(gap)[0]
            have = set((pk[(pk // (G * E) == lo) & (pk % E == eo)] // E % G).tolist())
            so = next(s_ for s_ in range(G) if self.loads[lo, s_, eo] > 0 and s_ not in have)
            raise PlanInvalidError(f"layer {lo}, source {so}, expert {eo}: routes carry 0 tokens, loads say {self.loads[lo, so, eo]}")
        if self.integral and not np.all(rt == np.floor(rt)):
            i = np.flatnonzero(rt != np.floor(rt))[0]
            raise PlanInvalidError(f"loads are integral but route {ri[i].tolist()} carries {rt[i]} tokens")
        return self
