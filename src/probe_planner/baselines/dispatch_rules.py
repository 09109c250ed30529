"""How serving engines split an expert's tokens over its copies on a fixed placement, written from
the published descriptions; registered as solvers (no replicas: they dispatch on the topology's
own placement, e.g. an :mod:`EPLB <probe_planner.baselines.eplb>` one) and scored like any plan.

- ``even`` (vLLM): a token goes to copy ``position mod count``, so each copy gets an equal share;
  whole counts: ``n // c`` each and the remainder one apiece to the lowest-ranked copies.
- ``local-first`` (SGLang's static dispatch): the source's own copy when it has one, else one fixed
  copy — our reading of "fixed": the copy ``source mod count`` among those in the source's node
  when there are any, else among all (a per-source fixed choice that does not send every source to
  the same copy).
- ``lplb`` (DeepSeek LPLB): per batch, the LP that minimises the largest number of tokens any rank
  processes over the placement's copies — token counts only (no roofline, no link times) — then
  each rank's own tokens stay local where its copy's quota allows, the rest go in rank order.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import optimize, sparse

from ..problem import Problem
from ..routes import compact_routes
from ..solvers import SolverResult
from ..solvers.registry import register


def _result(prob: Problem, flows: list[tuple[int, int, int, float]], info: dict) -> SolverResult:
    """``(layer, src, expert, dst, tokens)`` flows as a compact result with no replicas."""
    arr = np.array(flows, dtype=np.float64).reshape(-1, 5)
    keep = arr[:, 4] > 0
    idx, tok = arr[keep, :4].astype(np.int64), arr[keep, 4]
    rep = np.zeros((0, 4), dtype=np.int64)
    idx, tok = compact_routes(prob.topology.native, rep, idx, tok, prob.loads.shape[0])
    return SolverResult(rep, idx, tok, info)


def _hosts(prob: Problem) -> list[np.ndarray]:
    return [np.flatnonzero(prob.topology.native[:, e]) for e in range(prob.topology.num_experts)]


def _shares(n: np.ndarray, c: int, integral: bool) -> np.ndarray:
    """``[G, c]`` an even split of each source's ``n [G]`` over ``c`` copies."""
    if not integral:
        return np.repeat(n[:, None] / c, c, axis=1)
    base = np.floor(n / c)
    return base[:, None] + (np.arange(c)[None, :] < (n - base * c)[:, None])


@register("even")
def solve_even(prob: Problem) -> SolverResult:
    """vLLM-style even dispatch over the placement's copies."""
    hosts, flows = _hosts(prob), []
    for lay, e in zip(*np.nonzero(prob.loads.sum(axis=1) > 0), strict=True):
        hs = hosts[e]
        part = _shares(prob.loads[lay, :, e], hs.size, prob.integral)
        for s, i in zip(*np.nonzero(part), strict=True):
            flows.append((lay, s, e, hs[i], part[s, i]))
    return _result(prob, flows, {"status": "heuristic", "message": "even split over copies (vLLM-style)"})


@register("local-first")
def solve_local_first(prob: Problem) -> SolverResult:
    """SGLang-style static dispatch: own copy, else one fixed copy (module doc)."""
    topo = prob.topology
    node = topo.node_of
    hosts, flows = _hosts(prob), []
    for lay, s, e in zip(*np.nonzero(prob.loads > 0), strict=True):
        hs = hosts[e]
        if topo.native[s, e]:
            d = s
        else:
            near = hs[node[hs] == node[s]]
            pool = near if near.size else hs
            d = pool[s % pool.size]
        flows.append((lay, s, e, d, prob.loads[lay, s, e]))
    return _result(prob, flows, {"status": "heuristic", "message": "own copy, else a fixed one (SGLang static)"})


def _token_lp(totals: np.ndarray, hosts: list[np.ndarray], num_ranks: int, time_limit: float) -> np.ndarray | None:
    """``[sum c_e]`` tokens per (expert, copy), minimising the largest rank total; None if HiGHS
    did not finish in ``time_limit``."""
    cols_e = np.concatenate([np.full(h.size, e) for e, h in enumerate(hosts)])
    cols_r = np.concatenate(hosts)
    n = cols_e.size
    # variables: x (one per copy), then t; rows: each expert's copies sum to its tokens (==),
    # each rank's copies sum to at most t (<=)
    eq = sparse.csr_matrix((np.ones(n), (cols_e, np.arange(n))), shape=(len(hosts), n + 1))
    ub = sparse.hstack([sparse.csr_matrix((np.ones(n), (cols_r, np.arange(n))), shape=(num_ranks, n)),
                        sparse.csr_matrix(-np.ones((num_ranks, 1)))])
    c = np.zeros(n + 1)
    c[-1] = 1.0
    res = optimize.linprog(c, A_ub=ub, b_ub=np.zeros(num_ranks), A_eq=eq, b_eq=totals, bounds=(0, None),
                           method="highs", options={"time_limit": max(time_limit, 1e-3)})
    return res.x[:n] if res.status == 0 else None


def _round_quotas(x: np.ndarray, totals: np.ndarray, cols_e: np.ndarray, cols_r: np.ndarray, num_ranks: int) -> np.ndarray:
    """Whole-number quotas summing to each expert's total: floors, then each expert's leftover tokens
    one at a time to its copy on the least-loaded rank."""
    q = np.floor(x + 1e-9)
    load = np.bincount(cols_r, weights=q, minlength=num_ranks)
    left = totals - np.bincount(cols_e, weights=q, minlength=totals.size)
    for e in np.flatnonzero(left > 0.5).tolist():
        cols = np.flatnonzero(cols_e == e)
        for _ in range(int(round(left[e]))):
            j = cols[np.argmin(load[cols_r[cols]])]
            q[j] += 1
            load[cols_r[j]] += 1
    return q


@register("lplb")
def solve_lplb(prob: Problem) -> SolverResult:
    """DeepSeek LPLB-style per-batch token LP over the placement's copies (module doc)."""
    topo = prob.topology
    G = topo.num_ranks
    hosts = _hosts(prob)
    cols_e = np.concatenate([np.full(h.size, e) for e, h in enumerate(hosts)])
    cols_r = np.concatenate(hosts)
    flows, fell_back = [], 0
    for lay in range(prob.loads.shape[0]):
        n = prob.loads[lay]
        totals = n.sum(axis=0)
        x = _token_lp(totals, hosts, G, prob.deadline - time.perf_counter())
        if x is None:  # out of time: an even split keeps the plan valid, and the message says so
            fell_back += 1
            x = np.concatenate([np.full(h.size, totals[e] / h.size) for e, h in enumerate(hosts)])
        if prob.integral:
            x = _round_quotas(x, totals, cols_e, cols_r, G)
        start = np.searchsorted(cols_e, np.arange(len(hosts)))
        for e in np.flatnonzero(totals > 0).tolist():
            hs, quota = hosts[e], x[start[e]:start[e] + hosts[e].size].copy()
            supply = n[:, e].copy()
            for i, h in enumerate(hs.tolist()):  # a host's own tokens stay local up to its quota
                keep = min(supply[h], quota[i])
                if keep > 0:
                    flows.append((lay, h, e, h, keep))
                supply[h] -= keep
                quota[i] -= keep
            i = 0
            for s in np.flatnonzero(supply > 0).tolist():  # the rest in rank order (northwest corner)
                while supply[s] > 1e-12 and i < hs.size:
                    take = min(supply[s], quota[i])
                    if take > 0:
                        flows.append((lay, s, e, hs[i], take))
                        supply[s] -= take
                        quota[i] -= take
                    if quota[i] <= 1e-12:
                        i += 1
                if supply[s] > 1e-12:  # float dust past the last quota: to the last copy
                    flows.append((lay, s, e, hs[-1], supply[s]))
    msg = "token-count LP per batch (LPLB-style)" + (f"; {fell_back} layers out of time, split evenly" if fell_back else "")
    return _result(prob, flows, {"status": "heuristic", "message": msg})
