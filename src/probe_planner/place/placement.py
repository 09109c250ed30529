"""The result of :func:`probe_planner.place.place`: a long-lived placement, its expected cost and its copies.

``hosts [L, G, E]`` bool: which ranks hold each expert in each layer, every rank the same number of
experts, every expert at least once. It converts to and from the engines' map object
(:class:`probe_planner.baselines.eplb.EplbPlacement`, which :func:`probe_planner.engine_maps.save_map`
writes as eplb / sglang / trtllm files) and gives the topology per-batch planning runs on
(:meth:`Placement.topology`: this layer's hosts as the baseline, the reserved slots as replica slots).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..baselines.eplb import EplbPlacement
from ..engine_maps import from_phy2log
from ..errors import PlacementError
from ..topology import Topology


def hosts_to_phy2log(hosts: np.ndarray) -> np.ndarray:
    """``[L, G, E]`` host matrices with equal experts per rank -> ``phy2log [L, G·S]`` (rank by rank,
    experts ascending within a rank: the engines' layout, physical slot ``p`` on rank ``p // S``)."""
    per = hosts.sum(axis=2)
    if (per != per[0, 0]).any():
        raise PlacementError(f"ranks hold different numbers of experts ({sorted(set(per.ravel().tolist()))[:6]}): "
                             "an engine map needs equal slots per rank")
    L, G, E = hosts.shape
    _, _, e = np.nonzero(hosts)  # by layer, rank, expert ascending
    return e.reshape(L, G * int(per[0, 0])).astype(np.int64)


@dataclass(frozen=True)
class Placement:
    """A long-lived placement and what :func:`place` measured for it.

    ``hosts [L, G, E]`` bool; ``reserve``: spare slots per rank kept for per-batch planning (not in
    ``hosts``); ``copies [C, 4]`` int (layer, expert, source rank, destination rank): the weight copies
    from the current placement (source: a rank holding the expert there); ``moved_bytes`` their bytes;
    ``move_time_us`` the longest rank's time for all of them at once at the card's bandwidths;
    ``before_us`` / ``after_us``: expected per-batch makespan (sum over layers of the mean over the
    scored batches) of the current placement and of this one, ``layer_before_us`` / ``layer_after_us``
    ``[L]`` per layer; ``eplb_us``: the same for an EPLB-style placement of the same window and slots
    (NaN when not computed); ``status``: ``"replaced"`` or ``"kept"`` (re-placing would not pay: this
    is the current placement); ``message`` says why.
    """

    hosts: np.ndarray
    reserve: int = 0
    copies: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    moved_bytes: float = 0.0
    move_time_us: float = 0.0
    before_us: float = float("nan")
    after_us: float = float("nan")
    layer_before_us: np.ndarray = field(default_factory=lambda: np.zeros(0))
    layer_after_us: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eplb_us: float = float("nan")
    status: str = "given"
    message: str = ""
    info: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.hosts.shape[0]

    @property
    def num_ranks(self) -> int:
        return self.hosts.shape[1]

    @property
    def slots_per_rank(self) -> int:
        """Experts each rank holds (the reserved slots not counted)."""
        return int(self.hosts[0, 0].sum())

    @property
    def gain(self) -> float:
        """Expected relative gain over the current placement, ``1 - after / before``."""
        return 1.0 - self.after_us / self.before_us if self.before_us > 0 else 0.0

    def to_map(self) -> EplbPlacement:
        """The engines' map object (validated: equal slots per rank, no duplicate on a rank, every expert)."""
        return from_phy2log(hosts_to_phy2log(self.hosts), self.num_ranks, self.hosts.shape[2])

    @classmethod
    def from_map(cls, m: EplbPlacement, reserve: int = 0) -> Placement:
        """A placement holding map ``m``'s hosts (no measurements)."""
        hosts = np.stack([m.hosts(lay) for lay in range(m.phy2log.shape[0])])
        return cls(hosts=hosts, reserve=int(reserve), message="from a map")

    def topology(self, base: Topology, layer: int) -> Topology:
        """``base`` with ``layer``'s hosts as its baseline placement and the ``reserve`` slots as its
        replica slots: the cluster per-batch planning (``solve``) works on for that layer."""
        if not 0 <= layer < self.num_layers:
            raise PlacementError(f"layer {layer} out of range [0, {self.num_layers})")
        if base.num_ranks != self.num_ranks or base.num_experts != self.hosts.shape[2]:
            raise PlacementError(f"the placement is for {self.num_ranks} ranks x {self.hosts.shape[2]} experts, "
                                 f"the topology has {base.num_ranks} x {base.num_experts}")
        return base.with_(placement=self.hosts[layer], slots=self.reserve)

    def summary(self) -> str:
        """One paragraph: expected makespans, copies, status."""
        lines = [f"placement: {self.num_layers} layer(s), {self.num_ranks} ranks x {self.slots_per_rank} slots"
                 + (f" + {self.reserve} reserved" if self.reserve else "") + f" ({self.status})",
                 f"expected makespan per batch: current {self.before_us:.1f} us -> placed {self.after_us:.1f} us "
                 f"({self.gain:+.1%})"]
        if np.isfinite(self.eplb_us):
            lines.append(f"EPLB-style placement of the same window: {self.eplb_us:.1f} us")
        lines.append(f"moves: {len(self.copies)} weight copies, {self.moved_bytes / 1e9:.3f} GB, "
                     f"{self.move_time_us / 1e3:.2f} ms at the card's bandwidths (all at once)")
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)
