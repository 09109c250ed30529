"""Running a scenario: every method on every scored (step, layer), one at a time (solve times are
wall times in this process, so nothing else runs beside them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..baselines.eplb import eplb_placement
from ..budget import Budget
from ..errors import PlannerError
from ..topology import Topology
from .methods import METHODS, Context
from .sources import SOURCES, load_source


@dataclass(frozen=True)
class Scenario:
    """Model card × cluster card (``ranks`` overrides its rank count) × load source × window ×
    methods. ``steps`` batches are drawn; step 0 only feeds the history, steps 1.. are scored;
    ``budget_s`` is every solver's time budget per call; ``gamma`` the capacity factor."""

    name: str
    model: str
    cluster: str
    source: str
    steps: int = 4
    layers: int = 8
    window_us: float = 300.0
    budget_s: float = 0.05
    methods: tuple[str, ...] = tuple(METHODS)
    ranks: int | None = None
    gamma: float = 1.5
    seed: int = 0
    trace_dir: str | None = None

    def topology(self) -> Topology:
        return Topology.from_cards(self.model, self.cluster, ranks=self.ranks)

    def check(self) -> None:
        """Refuse a malformed scenario before anything runs."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PlannerError(f"unknown methods {unknown}; have {list(METHODS)}")
        if self.source not in SOURCES:
            raise PlannerError(f"unknown load source {self.source!r}; have {sorted(SOURCES)}")
        want = SOURCES[self.source].model
        if want is not None and want != self.model:
            raise PlannerError(f"source {self.source} records {want}; the scenario's model is {self.model}")
        if self.steps < 2 or self.layers < 1:
            raise PlannerError("a scenario needs steps >= 2 (step 0 is history) and layers >= 1")
        Budget(window_us=self.window_us, time_limit_s=self.budget_s)


@dataclass
class Row:
    """One method on one (step, layer). ``bound_us``: the best lower bound known for the layer's
    HABP problem (the largest our solvers proved, at least the analytic one); ``speedup``: static's
    makespan over this one; ``copies``: replicas, or for EPLB-style methods weight moves against the
    sharded placement; ``outside``: copies that do not fit the window; ``dropped``/``rerouted``:
    fractions of token assignments (lossy methods)."""

    scenario: str
    method: str
    step: int
    layer: int
    makespan_us: float
    bound_us: float
    ratio_to_bound: float
    speedup: float
    imbalance: float
    copies: int
    bytes_copied: float
    outside: int
    dropped: float
    rerouted: float
    solve_s: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


_BOUNDED = ("static", "greedy", "lp-round", "auto", "milp")  # plans for the real loads on the real problem


def run_scenario(sc: Scenario, progress: Callable[[int], None] | None = None) -> list[Row]:
    """Every method of ``sc`` on every scored (step, layer); ``progress(n)`` after each method call."""
    sc.check()
    topo = sc.topology()
    G, E = topo.num_ranks, topo.num_experts
    loads = load_source(sc.source, G, E, sc.steps, sc.layers, sc.trace_dir, top_k=topo.model.top_k, seed=sc.seed)
    budget = Budget(window_us=sc.window_us, time_limit_s=sc.budget_s)
    redundant = G * topo.slots
    expert_bytes = topo.model.expert_bytes
    rows: list[Row] = []
    for step in range(1, loads.shape[0]):
        history = loads[:step].sum(axis=(0, 2))  # [L, E]: every step before this one
        cache: dict[str, tuple] = {}

        def eplb(kind: str, step=step, history=history, cache=cache):
            if kind not in cache:
                totals = loads[step].sum(axis=1) if kind == "oracle" else history
                t0 = time.perf_counter()
                p = eplb_placement(totals, topo, redundant, hierarchical=kind == "hierarchical")
                per_layer = (time.perf_counter() - t0) / totals.shape[0]
                cache[kind] = (p, p.migration(topo, sc.window_us), per_layer)
            return cache[kind]

        for lay in range(loads.shape[1]):
            ctx = Context(loads[step, lay], loads[step - 1, lay], history[lay], lay, topo, budget, sc.gamma, eplb)
            outs = {}
            for m in ("static", *[m for m in sc.methods if m != "static"]):
                outs[m] = METHODS[m](ctx)
                if progress is not None:
                    progress(1)
            static_mk = outs["static"].plan.makespan_us
            bound = max(outs[m].plan.bound_us for m in outs if m in _BOUNDED)
            for m, o in outs.items():
                if m == "static" and "static" not in sc.methods:
                    continue
                mk = o.plan.makespan_us
                rows.append(Row(sc.name, m, step, lay, mk, bound, mk / bound if bound > 0 else 1.0,
                                static_mk / mk if mk > 0 else 1.0, o.plan.imbalance_ratio, o.copies,
                                float(o.copies * expert_bytes), o.outside, o.dropped, o.rerouted, o.solve_s))
    return rows


def calls(sc: Scenario) -> int:
    """How many method calls :func:`run_scenario` makes (for a progress bar)."""
    return (sc.steps - 1) * sc.layers * len({"static", *sc.methods})
