"""From a plan made for predicted loads to a dispatch rule valid for any real routing.

A plan says how many of each source's tokens for an expert each host processes, for the loads it
was made for; the real batch routes other counts. :class:`DispatchRule` keeps the plan's placement
and, per (layer, source, expert), the plan's *proportions* over that expert's hosts: real tokens are
split ``floor(count × share)`` per host, and what rounding leaves — and every token of a pair the plan
gave none — goes to the pair's *overflow host*: the source itself when it holds the expert (no
traffic), else the host the plan gave most of that source's tokens, else the expert's busiest host
in the plan. Every token lands on a rank holding its expert's weights, and the split depends only on
the plan and the counts, so every rank computes the same splits from the exchanged counts. The
runtime dispatches with it; the simulator scores plans on real routing with it.
"""

from __future__ import annotations

import numpy as np

from .errors import LoadsError
from .plan import Plan


class DispatchRule:
    """A plan's placement and per-(layer, source, expert) host proportions, built per layer on first
    use (:meth:`layer`): ``hosts [E, H]`` each expert's hosts (natives first, then the layer's
    replicas by destination; -1 pads), ``weight [G, E, H]`` the plan's tokens of each source on each
    host (the shares' numerators; whole numbers when the plan's loads were), ``overflow [G, E]`` the
    host slot that takes the remainder.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.num_layers, self.num_ranks, self.num_experts = plan.loads.shape
        self.integral = plan.integral
        self._layers: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def layer(self, lay: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(hosts [E, H], weight [G, E, H], overflow [G, E])`` of one layer."""
        if not 0 <= lay < self.num_layers:
            raise LoadsError(f"layer {lay} out of range [0, {self.num_layers})")
        if lay not in self._layers:
            self._layers[lay] = self._build(lay)
        return self._layers[lay]

    def _build(self, lay: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        plan = self.plan
        G, E = self.num_ranks, self.num_experts
        native = plan.topology.native  # [G, E]
        part = plan.layer(lay)
        rep = part.replicas[np.lexsort((part.replicas[:, 2], part.replicas[:, 0]))]  # by expert, destination
        n_nat = native.sum(axis=0)
        n_hosts = n_nat + np.bincount(rep[:, 0], minlength=E)
        hosts = np.full((E, int(n_hosts.max(initial=1))), -1, dtype=np.int64)
        nat_e, nat_r = np.nonzero(native.T)  # by expert, ranks ascending
        hosts[nat_e, np.arange(nat_e.size) - np.searchsorted(nat_e, nat_e)] = nat_r
        rep_e = rep[:, 0]
        hosts[rep_e, n_nat[rep_e] + np.arange(rep_e.size) - np.searchsorted(rep_e, rep_e)] = rep[:, 2]
        where = np.full((E, G), -1, dtype=np.int64)  # host slot of (expert, rank), -1 where it holds none
        ei, hi = np.nonzero(hosts >= 0)
        where[ei, hosts[ei, hi]] = hi
        s, e, d = part.routes.T
        weight = np.zeros((G, E, hosts.shape[1]))
        np.add.at(weight, (s, e, where[e, d]), part.tokens)
        # overflow: the source itself if it holds the expert, else its largest planned host, else the
        # expert's largest host over all sources (ties: the lower slot, natives first)
        own = where.T  # [G, E]
        planned = weight.sum(axis=2) > 0
        busiest = np.argmax(weight.sum(axis=0), axis=1)  # [E]
        overflow = np.where(own >= 0, own, np.where(planned, np.argmax(weight, axis=2), busiest[None, :]))
        return hosts, weight, overflow

    def split(self, layer: int, counts: np.ndarray) -> np.ndarray:
        """``[G, E, H]`` tokens per host slot for the real ``counts [G, E]`` (tokens each source routes
        to each expert) of ``layer``; whole numbers for whole counts, sums exact per (source, expert)."""
        _, w, overflow = self.layer(layer)
        c = np.asarray(counts, dtype=np.float64)
        if c.shape != (self.num_ranks, self.num_experts):
            raise LoadsError(f"counts must be [G={self.num_ranks}, E={self.num_experts}], got shape {list(c.shape)}")
        if not (c.min(initial=0.0) >= 0.0 and c.max(initial=0.0) < np.inf):
            raise LoadsError("counts must be finite and >= 0")
        total = w.sum(axis=2, keepdims=True)
        whole = bool(np.all(c == np.floor(c)))
        if whole and self.integral and c.max(initial=0.0) * w.max(initial=0.0) < 2.0**62:  # exact in int64:
            # the planned counts give the plan back
            ti = total.astype(np.int64)
            out = ((c.astype(np.int64)[:, :, None] * w.astype(np.int64)) // np.maximum(ti, 1)).astype(np.float64)
        else:
            share = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
            out = np.floor(c[:, :, None] * share) if whole else c[:, :, None] * share
        left = c - out.sum(axis=2)  # rounding remainder, and pairs the plan gave nothing
        g, e = np.indices(c.shape)
        out[g, e, overflow] += left
        return out

    def routes(self, layer: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(routes [N, 3] (source, expert, destination), tokens [N])`` of :meth:`split`, nonzero only."""
        hosts = self.layer(layer)[0]
        out = self.split(layer, counts)
        s, e, h = np.nonzero(out)
        return np.stack([s, e, hosts[e, h]], axis=1), out[s, e, h]

    def executed(self, counts: np.ndarray) -> Plan:
        """The plan as run on real ``counts [L, G, E]``: its replicas, this rule's routes; validated,
        so its metrics are what running it costs under the cost model."""
        c = np.asarray(counts, dtype=np.float64)
        if c.ndim != 3 or c.shape[0] != self.num_layers:
            raise LoadsError(f"counts must be [L={self.num_layers}, G, E], got shape {list(c.shape)}")
        idx, tok = [], []
        for lay in range(self.num_layers):
            r, t = self.routes(lay, c[lay])
            idx.append(np.hstack([np.full((r.shape[0], 1), lay), r]))
            tok.append(t)
        p = self.plan
        # the plan's status and bound were for the loads it was made for, not these
        info = {k: v for k, v in p.info.items() if k not in ("bound_us", "status", "gap")}
        return Plan(p.topology, p.budget, c, p.replicas, np.vstack(idx), np.concatenate(tok), solver=p.solver,
                    solve_time_s=p.solve_time_s, info=dict(info, executed_on="real counts")).validate()
