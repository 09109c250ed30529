"""Problem model: the MoE model's shape and the cluster it runs on.

Units are SI throughout (bytes, bytes/s, FLOP/s); the cost model converts to microseconds.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, dataclass, field
from pathlib import Path

import numpy as np

from .errors import CardError, TopologyError

# Upper bounds that keep every derived size and cost finite and every array allocatable.
MAX_COUNT = 2**20  # ranks, experts, top_k, slots: they size the planner's arrays
MAX_HOST_ENTRIES = 2**26  # num_ranks x num_experts: the [G, E] matrices every plan and solver keeps
MAX_SIZE = 2**53  # hidden, expert_ffn, layers, ...: plain sizes, exact as float64 up to here
UNIT_US_RANGE = (1e-100, 1e100)  # per-token / per-copy times the cost model derives, in µs


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _positive(name: str, value) -> float:
    """``value`` as a float if it is a finite real number > 0 (bool, str, None, arrays ... are not)."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TopologyError(f"{name} must be a positive finite number, got {_show(value)} ({type(value).__name__})")
    try:
        out = float(value)
    except OverflowError:  # an int beyond 1.8e308
        out = math.inf
    if not math.isfinite(out) or out <= 0:
        raise TopologyError(f"{name} must be a positive finite number, got {_show(value)}")
    return out


def _positive_int(name: str, value, minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    """``value`` as an int if it is an integer (or an integral float) in ``[minimum, maximum]``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok and not isinstance(value, numbers.Integral):
        ok = math.isfinite(value) and float(value).is_integer()
    if not ok or not minimum <= value <= maximum:
        raise TopologyError(f"{name} must be an integer in [{minimum}, {maximum}], got {_show(value)}"
                            + ("" if ok else f" ({type(value).__name__})"))
    return int(value)


def _check_str(name: str, value) -> str:
    if not isinstance(value, str):
        raise TopologyError(f"{name} must be a string, got {_show(value)} ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class ModelShape:
    """Shape of one MoE layer's routed experts.

    ``ffn_matrices`` is 3 for gated (SwiGLU) experts and 2 for plain two-matrix FFNs.
    ``weight_bytes`` is bytes per expert parameter (2 for BF16, 1 for FP8, 0.53125 for MXFP4);
    ``act_bytes`` is bytes per activation element sent through the all-to-all.

    Contract (each breach raises :class:`TopologyError` naming the field): ``name`` is a string;
    ``num_experts`` and ``top_k`` are integers in ``[1, MAX_COUNT]`` with ``top_k <= num_experts``;
    ``hidden``, ``expert_ffn``, ``moe_layers`` integers in ``[1, 2**53]``, ``ffn_matrices`` in
    ``[2, 2**53]``, ``shared_experts`` in ``[0, 2**53]``; ``weight_bytes`` and ``act_bytes`` finite
    real numbers ``> 0``. Integers may be Python or numpy integers or integral floats (``8.0``), never
    bool, str, None or containers; they are stored as ``int``, the byte sizes as ``float``.
    """

    name: str
    num_experts: int
    top_k: int
    hidden: int
    expert_ffn: int
    moe_layers: int = 1
    weight_bytes: float = 2.0
    act_bytes: float = 2.0
    ffn_matrices: int = 3
    shared_experts: int = 0

    def __post_init__(self) -> None:
        _check_str("name", self.name)
        set_ = object.__setattr__  # frozen: store the normalized values
        for name, minimum, maximum in (("num_experts", 1, MAX_COUNT), ("top_k", 1, MAX_COUNT), ("hidden", 1, MAX_SIZE),
                                       ("expert_ffn", 1, MAX_SIZE), ("moe_layers", 1, MAX_SIZE),
                                       ("ffn_matrices", 2, MAX_SIZE), ("shared_experts", 0, MAX_SIZE)):
            set_(self, name, _positive_int(name, getattr(self, name), minimum, maximum))
        if self.top_k > self.num_experts:
            raise TopologyError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        set_(self, "weight_bytes", _positive("weight_bytes", self.weight_bytes))
        set_(self, "act_bytes", _positive("act_bytes", self.act_bytes))

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert."""
        return self.ffn_matrices * self.hidden * self.expert_ffn

    @property
    def expert_bytes(self) -> float:
        """Bytes of one routed expert's weights (what a replica copy moves)."""
        return self.expert_params * self.weight_bytes

    @property
    def token_bytes(self) -> float:
        """Bytes of one token's hidden state in the all-to-all."""
        return self.hidden * self.act_bytes

    @property
    def flops_per_token(self) -> float:
        """FLOPs of one token through one expert (2 per multiply-accumulate)."""
        return 2.0 * self.expert_params


# Topology fields a cluster card (or a from_cards override) sets; the model comes from the model card.
CLUSTER_FIELDS = ("num_ranks", "ranks_per_node", "intra_node_bw", "inter_node_bw", "peak_flops", "hbm_bw",
                  "slots", "placement", "name")


@dataclass(frozen=True, eq=False)
class Topology:
    """A cluster of ``num_ranks`` GPUs running one MoE model under expert parallelism.

    Bandwidths are per rank and per direction: ``intra_node_bw`` over NVLink/NVSwitch,
    ``inter_node_bw`` over the rank's NIC. ``placement`` is the baseline (native) placement as a
    boolean ``[G, E]`` host matrix; ``None`` means sharded (expert ``e`` on rank ``e // (E/G)``).
    A ``[E]`` integer array giving each expert's rank is accepted too.

    Contract (each breach raises :class:`TopologyError` naming the field): ``model`` is a
    :class:`ModelShape`; ``name`` a string; ``num_ranks`` and ``ranks_per_node`` integers in
    ``[1, MAX_COUNT]`` with ``num_ranks`` a multiple of ``ranks_per_node`` and
    ``num_ranks * num_experts <= MAX_HOST_ENTRIES``; ``slots`` an integer in ``[0, MAX_COUNT]``;
    the bandwidths and FLOP rate finite real numbers ``> 0`` (same integer/float rules as
    :class:`ModelShape`), such that the cost model's per-token and per-copy times lie in
    ``UNIT_US_RANGE`` µs; ``placement`` as above, every expert with a host.
    """

    num_ranks: int
    ranks_per_node: int
    intra_node_bw: float
    inter_node_bw: float
    peak_flops: float
    hbm_bw: float
    model: ModelShape
    slots: int = 3
    placement: np.ndarray | None = None
    name: str = "custom"
    native: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelShape):
            raise TopologyError(f"model must be a ModelShape, got {type(self.model).__name__}")
        _check_str("name", self.name)
        set_ = object.__setattr__  # frozen: store the normalized values
        g = _positive_int("num_ranks", self.num_ranks, maximum=MAX_COUNT)
        rpn = _positive_int("ranks_per_node", self.ranks_per_node, maximum=MAX_COUNT)
        set_(self, "num_ranks", g)
        set_(self, "ranks_per_node", rpn)
        if g % rpn:
            raise TopologyError(f"num_ranks={g} is not a multiple of ranks_per_node={rpn}")
        if g * self.model.num_experts > MAX_HOST_ENTRIES:
            raise TopologyError(f"num_ranks x num_experts = {g} x {self.model.num_experts} exceeds "
                                f"MAX_HOST_ENTRIES = 2**26 (the [G, E] matrices every plan keeps)")
        for name in ("intra_node_bw", "inter_node_bw", "peak_flops", "hbm_bw"):
            set_(self, name, _positive(name, getattr(self, name)))
        set_(self, "slots", _positive_int("slots", self.slots, minimum=0, maximum=MAX_COUNT))
        self._check_cost_units()
        set_(self, "native", self._native_matrix())
        self.native.setflags(write=False)

    def _check_cost_units(self) -> None:
        """The cost model's unit times (µs) must be finite and > 0 so every cost of every load stays so."""
        m = self.model
        lo, hi = UNIT_US_RANGE
        for what, value in (("flops per token / peak_flops", m.flops_per_token / self.peak_flops),
                            ("expert bytes / hbm_bw", m.expert_bytes / self.hbm_bw),
                            ("token bytes / intra_node_bw", m.token_bytes / self.intra_node_bw),
                            ("token bytes / inter_node_bw", m.token_bytes / self.inter_node_bw),
                            ("expert bytes / intra_node_bw", m.expert_bytes / self.intra_node_bw),
                            ("expert bytes / inter_node_bw", m.expert_bytes / self.inter_node_bw)):
            us = value * 1e6
            if not lo <= us <= hi:
                raise TopologyError(f"{what} gives {us:.3g} us, outside [{lo:g}, {hi:g}] us: "
                                    "check the units of the model and cluster numbers")

    def _native_matrix(self) -> np.ndarray:
        g, e = self.num_ranks, self.model.num_experts
        p = self.placement
        if isinstance(p, np.ma.MaskedArray):
            raise TopologyError("placement must be a plain array, not a masked array")
        if p is None:
            if e % g:
                raise TopologyError(
                    f"sharded placement needs num_experts ({e}) divisible by num_ranks ({g}); "
                    "pass an explicit placement"
                )
            native = np.zeros((g, e), dtype=bool)
            native[np.arange(e) // (e // g), np.arange(e)] = True
            return native
        try:
            p = np.asarray(p)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TopologyError(f"placement must be a 0/1 [G={g}, E={e}] host matrix or [E] ranks: {exc}") from exc
        if p.ndim == 1:
            if p.shape != (e,) or p.dtype.kind not in "iu":
                raise TopologyError(f"placement as ranks must be an integer [E={e}] array, got {p.dtype}{list(p.shape)}")
            if p.min() < 0 or p.max() >= g:
                raise TopologyError(f"placement ranks must lie in [0, {g}), got range [{p.min()}, {p.max()}]")
            native = np.zeros((g, e), dtype=bool)
            native[p, np.arange(e)] = True
            return native
        if p.shape != (g, e) or p.dtype.kind not in "biu" or not np.isin(p, (0, 1)).all():
            raise TopologyError(f"placement must be a 0/1 [G={g}, E={e}] host matrix, got {p.dtype}{list(p.shape)}")
        native = p.astype(bool)
        orphans = np.flatnonzero(~native.any(axis=0))
        if orphans.size:
            raise TopologyError(f"placement leaves experts without a host: {orphans[:8].tolist()}")
        return native

    @property
    def num_experts(self) -> int:
        return self.model.num_experts

    @property
    def num_nodes(self) -> int:
        return self.num_ranks // self.ranks_per_node

    @property
    def node_of(self) -> np.ndarray:
        """``[G]`` node index of every rank (ranks of one node are contiguous)."""
        return np.arange(self.num_ranks, dtype=np.int64) // self.ranks_per_node

    def with_(self, **changes) -> Topology:
        """A copy with some fields replaced (e.g. ``topo.with_(slots=0)``); unknown fields raise TopologyError."""
        fields = {k: getattr(self, k) for k in ("model", *CLUSTER_FIELDS)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise TopologyError(f"Topology has no field(s) {unknown}; fields: {sorted(fields)}")
        fields.update(changes)
        return Topology(**fields)

    @classmethod
    def from_cards(cls, model: str | Path, cluster: str | Path, ranks: int | None = None, **overrides) -> Topology:
        """Build a topology from a model card and a cluster card, each a built-in name or a path.

        ``ranks``: the same cluster resized to that many ranks — nodes of the card's size, or one
        node when the card's node is larger or does not divide them. Keyword ``overrides`` replace
        cluster fields (``slots=2``, ...), one of :data:`CLUSTER_FIELDS`; any other key raises
        :class:`CardError` listing them. Bad card files raise :class:`CardError`; bad override
        values :class:`TopologyError` naming the field.
        """
        from .cards import load_cluster_card, load_model_card

        unknown = sorted(set(overrides) - set(CLUSTER_FIELDS))
        if unknown:
            raise CardError(f"unknown Topology.from_cards override(s) {unknown}; allowed: {sorted(CLUSTER_FIELDS)}")
        shape = load_model_card(model)
        fields = load_cluster_card(cluster)
        if ranks is not None:
            rpn = fields["ranks_per_node"]
            fields.update(num_ranks=ranks, ranks_per_node=rpn if isinstance(ranks, int) and 0 < rpn <= ranks and ranks % rpn == 0
                          else ranks)
        fields.update(overrides)
        return cls(model=shape, **fields)

    def to_dict(self) -> dict:
        """Plain-data form (JSON-ready) that :meth:`from_dict` restores exactly."""
        m = self.model
        return {
            "name": self.name,
            "num_ranks": self.num_ranks,
            "ranks_per_node": self.ranks_per_node,
            "intra_node_bw": self.intra_node_bw,
            "inter_node_bw": self.inter_node_bw,
            "peak_flops": self.peak_flops,
            "hbm_bw": self.hbm_bw,
            "slots": self.slots,
            "native": self.native.astype(np.uint8).tolist(),
            "model": {k: getattr(m, k) for k in m.__dataclass_fields__},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Topology:
        """Inverse of :meth:`to_dict`; a malformed dict raises :class:`TopologyError`."""
        d = dict(_checked_keys("a topology dict", d, {"model", "native", *CLUSTER_FIELDS} - {"placement"},
                               {"slots", "name"}))
        m = _checked_keys("a topology dict's model", d.pop("model"), set(ModelShape.__dataclass_fields__),
                          {k for k, f in ModelShape.__dataclass_fields__.items() if f.default is not MISSING})
        model = ModelShape(**m)
        native = d.pop("native")
        if not isinstance(native, np.ndarray):
            try:
                native = np.asarray(native)
            except (TypeError, ValueError) as exc:
                raise TopologyError(f"a topology dict's native must be a 0/1 [G, E] matrix: {exc}") from exc
        return cls(model=model, placement=native, **d)


def _checked_keys(what: str, d, allowed: set[str], optional: set[str]) -> dict:
    if not isinstance(d, dict):
        raise TopologyError(f"{what} must be a dict, got {type(d).__name__}")
    unknown, missing = sorted(set(d) - allowed), sorted(allowed - optional - set(d))
    if unknown or missing:
        raise TopologyError(f"{what} has unknown keys {unknown} and lacks keys {missing}; allowed: {sorted(allowed)}")
    return d
