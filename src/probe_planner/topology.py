"""Problem model: the MoE model's shape and the cluster it runs on.

Units are SI throughout (bytes, bytes/s, FLOP/s); the cost model converts to microseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import TopologyError


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise TopologyError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise TopologyError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ModelShape:
    """Shape of one MoE layer's routed experts.

    ``ffn_matrices`` is 3 for gated (SwiGLU) experts and 2 for plain two-matrix FFNs.
    ``weight_bytes`` is bytes per expert parameter (2 for BF16, 1 for FP8, 0.53125 for MXFP4);
    ``act_bytes`` is bytes per activation element sent through the all-to-all.
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
        _positive_int("num_experts", self.num_experts)
        _positive_int("top_k", self.top_k)
        if self.top_k > self.num_experts:
            raise TopologyError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        _positive_int("hidden", self.hidden)
        _positive_int("expert_ffn", self.expert_ffn)
        _positive_int("moe_layers", self.moe_layers)
        _positive_int("ffn_matrices", self.ffn_matrices, minimum=2)
        _positive_int("shared_experts", self.shared_experts, minimum=0)
        _positive("weight_bytes", self.weight_bytes)
        _positive("act_bytes", self.act_bytes)

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


@dataclass(frozen=True, eq=False)
class Topology:
    """A cluster of ``num_ranks`` GPUs running one MoE model under expert parallelism.

    Bandwidths are per rank and per direction: ``intra_node_bw`` over NVLink/NVSwitch,
    ``inter_node_bw`` over the rank's NIC. ``placement`` is the baseline (native) placement as a
    boolean ``[G, E]`` host matrix; ``None`` means sharded (expert ``e`` on rank ``e // (E/G)``).
    A ``[E]`` integer array giving each expert's rank is accepted too.
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
        g = _positive_int("num_ranks", self.num_ranks)
        rpn = _positive_int("ranks_per_node", self.ranks_per_node)
        if g % rpn:
            raise TopologyError(f"num_ranks={g} is not a multiple of ranks_per_node={rpn}")
        for name in ("intra_node_bw", "inter_node_bw", "peak_flops", "hbm_bw"):
            _positive(name, getattr(self, name))
        _positive_int("slots", self.slots, minimum=0)
        object.__setattr__(self, "native", self._native_matrix())
        self.native.setflags(write=False)

    def _native_matrix(self) -> np.ndarray:
        g, e = self.num_ranks, self.model.num_experts
        p = self.placement
        if p is None:
            if e % g:
                raise TopologyError(
                    f"sharded placement needs num_experts ({e}) divisible by num_ranks ({g}); "
                    "pass an explicit placement"
                )
            native = np.zeros((g, e), dtype=bool)
            native[np.arange(e) // (e // g), np.arange(e)] = True
            return native
        p = np.asarray(p)
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
        """A copy with some fields replaced (e.g. ``topo.with_(slots=0)``)."""
        fields = {k: getattr(self, k) for k in (
            "num_ranks", "ranks_per_node", "intra_node_bw", "inter_node_bw", "peak_flops",
            "hbm_bw", "model", "slots", "placement", "name")}
        fields.update(changes)
        return Topology(**fields)

    @classmethod
    def from_cards(cls, model: str | Path, cluster: str | Path, **overrides) -> Topology:
        """Build a topology from a model card and a cluster card, each a built-in name or a path.

        Keyword ``overrides`` replace cluster fields (``slots=2``, ``num_ranks=16``, ...).
        """
        from .cards import load_cluster_card, load_model_card

        shape = load_model_card(model)
        fields = load_cluster_card(cluster)
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
        d = dict(d)
        model = ModelShape(**d.pop("model"))
        native = np.asarray(d.pop("native"), dtype=np.int64)
        return cls(model=model, placement=native, **d)
