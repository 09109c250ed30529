"""The offload problem model: experts in host memory, a GPU expert cache, a batch group's predicted routing.

Costs come from the one cost model: an expert's compute is :func:`probe_planner.cost.expert_time_us`
with :class:`probe_planner.cost.CostParams`'s ``alpha_us`` / ``beta_us`` (FLOPs over peak, weights
over HBM bandwidth: the roofline of the model and cluster cards); a load is the expert's bytes over the
host → GPU link. Every input is checked here, once; planners and the timeline trust an
:class:`OffloadProblem`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cost import CostParams, expert_time_us
from ..errors import OffloadError
from ..topology import ModelShape, Topology

# PCIe Gen5 x16 moves 64 GB/s per direction raw; ~50 GB/s is what pinned-memory cudaMemcpy reaches
# (128b/130b coding, TLP headers, DMA setup). The cluster cards have no host-link field, so it is here.
PCIE_GEN5_X16_BPS = 50e9
# HBM an H100 SXM5 has (80 GB) less ~10 GB for the dense weights, activations and workspace: what is
# left for the expert cache by default.
H100_EXPERT_BUDGET_BYTES = 70e9
# A dual-socket host with 2 TB of DRAM holds every routed expert of the models on our cards.
HOST_BYTES = 2e12


def _real(name: str, value, minimum: float = 0.0, strict: bool = True) -> float:
    """``value`` as a finite float ``> minimum`` (``>=`` when not ``strict``); bool, str, None are refused."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise OffloadError(f"{name} must be a finite real number, got {value!r:.80} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or (v <= minimum if strict else v < minimum):
        raise OffloadError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r:.80}")
    return v


def _integer(name: str, value, minimum: int, maximum: int = 2**31 - 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or not minimum <= value <= maximum:
        raise OffloadError(f"{name} must be an integer in [{minimum}, {maximum}], got {value!r:.80}")
    return int(value)


@dataclass(frozen=True, eq=False)
class OffloadProblem:
    """One MoE model served from host memory on one GPU.

    ``alpha_us`` / ``beta_us``: per-token compute and weight-streaming floor of one expert (µs, from
    :class:`CostParams`); ``host_bw``: host → GPU bytes/s on one PCIe stream; ``cache_slots``: experts
    the GPU cache holds (``>= num_experts``, so an on-demand load always finds a victim outside its
    layer); ``batch_tokens``: tokens per batch (a group of ``b`` batches routes ``b·batch_tokens``);
    ``dense_us_per_token``: non-expert compute of one token in one layer (attention, router), which
    also hides loads; ``gpu_bytes``: HBM for the expert cache and the group's activations;
    ``host_bytes``: host memory for every routed expert; ``seq_bytes``: GPU bytes each of the group's
    tokens holds through the pass besides its activations (its KV cache when that stays on the GPU;
    0 when it lives elsewhere), which bounds the group.
    """

    model: ModelShape
    alpha_us: float
    beta_us: float
    host_bw: float
    cache_slots: int
    batch_tokens: int
    num_layers: int
    dense_us_per_token: float = 0.0
    gpu_bytes: float = H100_EXPERT_BUDGET_BYTES
    host_bytes: float = HOST_BYTES
    seq_bytes: float = 0.0
    load_us: float = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelShape):
            raise OffloadError(f"model must be a ModelShape, got {type(self.model).__name__}")
        set_ = object.__setattr__  # frozen: store the normalised values
        for name in ("alpha_us", "beta_us", "host_bw", "gpu_bytes", "host_bytes"):
            set_(self, name, _real(name, getattr(self, name)))
        for name in ("dense_us_per_token", "seq_bytes"):
            set_(self, name, _real(name, getattr(self, name), strict=False))
        set_(self, "batch_tokens", _integer("batch_tokens", self.batch_tokens, 1))
        set_(self, "num_layers", _integer("num_layers", self.num_layers, 1, 2**20))
        e = self.model.num_experts
        if not isinstance(self.cache_slots, numbers.Integral) or isinstance(self.cache_slots, (bool, np.bool_)) or self.cache_slots < e:
            raise OffloadError(f"cache_slots must be an integer >= num_experts={e} (an on-demand load must find a victim "
                               f"outside its layer), got {self.cache_slots!r:.80}")
        set_(self, "cache_slots", int(self.cache_slots))
        total = self.num_layers * e
        if self.cache_slots > total:  # more slots than experts buys nothing: clamp
            set_(self, "cache_slots", total)
        if total * self.model.expert_bytes > self.host_bytes:
            raise OffloadError(f"{total} experts of {self.model.expert_bytes / 1e6:.1f} MB do not fit host_bytes={self.host_bytes:.3g}")
        if self.cache_bytes > self.gpu_bytes:
            raise OffloadError(f"cache_slots={self.cache_slots} experts need {self.cache_bytes / 1e9:.2f} GB, "
                               f"more than gpu_bytes={self.gpu_bytes / 1e9:.2f} GB")
        set_(self, "load_us", self.model.expert_bytes / self.host_bw * 1e6)

    @classmethod
    def from_cards(cls, model: str | Path, cluster: str | Path, cache_slots: int, batch_tokens: int,
                   host_bw: float = PCIE_GEN5_X16_BPS, num_layers: int | None = None, **kwargs) -> OffloadProblem:
        """The problem for one GPU of ``cluster`` (its per-GPU FLOP/s and HBM bandwidth) running ``model``.

        ``num_layers`` defaults to the card's ``moe_layers``; ``kwargs`` go to the constructor
        (``dense_us_per_token``, ``gpu_bytes``, ``host_bytes``). Card errors raise :class:`CardError`.
        """
        topo = Topology.from_cards(model, cluster, ranks=1)
        p = CostParams.from_topology(topo)
        layers = topo.model.moe_layers if num_layers is None else num_layers
        return cls(model=topo.model, alpha_us=p.alpha_us, beta_us=p.beta_us, host_bw=host_bw, cache_slots=cache_slots,
                   batch_tokens=batch_tokens, num_layers=layers, **kwargs)

    def with_(self, **changes) -> OffloadProblem:
        """A copy with some fields replaced (``cache_slots=...``), checked again."""
        names = [f for f in self.__dataclass_fields__ if f != "load_us"]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise OffloadError(f"OffloadProblem has no field(s) {unknown}; fields: {names}")
        return OffloadProblem(**{**{k: getattr(self, k) for k in names}, **changes})

    @property
    def num_experts(self) -> int:
        return self.model.num_experts

    @property
    def top_k(self) -> int:
        return self.model.top_k

    @property
    def cache_bytes(self) -> float:
        return self.cache_slots * self.model.expert_bytes

    def group_tokens(self, group: int) -> int:
        """Tokens a group of ``group`` batches routes through each layer."""
        return group * self.batch_tokens

    def max_group(self) -> int:
        """The largest group whose tokens (hidden states in and out, plus ``seq_bytes`` each) fit beside
        the cache; at least 1 (a single batch always runs)."""
        left = self.gpu_bytes - self.cache_bytes
        return max(1, int(left // (self.batch_tokens * (2.0 * self.model.token_bytes + self.seq_bytes))))

    def compute_us(self, tokens: np.ndarray) -> np.ndarray:
        """Roofline compute of experts given their token counts (any shape; 0 where idle), by the cost model's rule."""
        t = np.asarray(tokens, dtype=np.float64)
        return np.vectorize(lambda n: expert_time_us(n, self.alpha_us, self.beta_us), otypes=[np.float64])(t) if t.size else t

    def dense_us(self, group: int) -> float:
        """Non-expert compute of one layer for a group."""
        return self.dense_us_per_token * self.group_tokens(group)

    def check_group(self, group) -> int:
        """``group`` as an int in ``[1, max_group()]``; else :class:`OffloadError`."""
        return _integer("group", group, 1, self.max_group())

    def check_freq(self, freq) -> np.ndarray:
        """Per-token routing probabilities ``[L, E]`` (``freq[l, e]``: the chance a token picks ``e`` at
        layer ``l``; rows sum to about ``top_k``) as float64; every entry in ``[0, 1]``."""
        f = _float_array("freq", freq, (self.num_layers, self.num_experts))
        if (f > 1.0).any():
            raise OffloadError("freq entries are per-token probabilities and must lie in [0, 1]")
        return f

    def check_counts(self, counts) -> np.ndarray:
        """Real token counts ``[S, L, E]`` (``S`` passes) as float64; integral and ``>= 0``."""
        c = _float_array("counts", counts, (None, self.num_layers, self.num_experts))
        if c.shape[0] < 1:
            raise OffloadError("counts must hold at least one pass")
        if not np.array_equal(c, np.round(c)):
            raise OffloadError("counts must be whole token counts")
        return c


def _float_array(name: str, value, shape: tuple) -> np.ndarray:
    """``value`` as a finite, ``>= 0`` float64 array of ``shape`` (``None``: any size on that axis)."""
    if isinstance(value, np.ma.MaskedArray):
        raise OffloadError(f"{name} must be a plain array, not a masked array")
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise OffloadError(f"{name} must be a numeric array: {exc}") from exc
    if a.dtype.kind not in "iuf":
        raise OffloadError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape, strict=True)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise OffloadError(f"{name} must have shape {want}, got {list(a.shape)}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all() or (a < 0).any():
        raise OffloadError(f"{name} must be finite and >= 0")
    return np.ascontiguousarray(a)


def need_probability(freq: np.ndarray, tokens: int) -> np.ndarray:
    """``[L, E]`` chance an expert is needed by at least one of ``tokens`` tokens (tokens route independently)."""
    return 1.0 - np.power(1.0 - np.clip(freq, 0.0, 1.0), tokens)


def expected_compute_us(problem: OffloadProblem, freq: np.ndarray, group: int) -> np.ndarray:
    """``[L, E]`` expected roofline compute of each expert for a group: ``P(needed) · time(E[n | needed])``."""
    n = problem.group_tokens(group)
    need = need_probability(freq, n)
    mean = freq * n
    cond = np.divide(mean, need, out=np.zeros_like(mean), where=need > 0)
    return need * problem.compute_us(cond)


@dataclass(frozen=True)
class GroupForecast:
    """What a planner knows about a group's next pass: ``need[l, e]`` the chance expert ``e`` of layer
    ``l`` is needed, ``compute_us[l, e]`` its expected compute (both ``[L, E]``), ``layer_us[l]`` the
    layer's expected compute (dense + experts), for a group of ``group`` batches."""

    group: int
    need: np.ndarray
    compute_us: np.ndarray
    layer_us: np.ndarray


def forecast(problem: OffloadProblem, freq: np.ndarray, group: int) -> GroupForecast:
    """The forecast of a group of ``group`` batches from per-token routing probabilities ``freq`` ``[L, E]``."""
    f = problem.check_freq(freq)
    g = problem.check_group(group)
    comp = expected_compute_us(problem, f, g)
    return GroupForecast(group=g, need=need_probability(f, problem.group_tokens(g)), compute_us=comp,
                         layer_us=comp.sum(axis=1) + problem.dense_us(g))
