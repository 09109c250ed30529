"""DeepSeek EPLB-style placement, written from its published description.

From per-expert load totals (a history window, not the batch being planned) and ``R`` redundant
slots, EPLB (1) gives each redundant slot, one at a time, to the expert with the largest load per
replica, and (2) packs the replicas onto ranks largest first, each rank getting the same number of
slots (``P / G`` for ``P = E + R`` physical slots) — here never two copies of one expert on one rank.
*Global*: replicate and pack over all ranks. *Hierarchical*: pack contiguous expert groups onto
nodes (balanced by group load), replicate within each node to fill its slots, pack onto the node's
ranks. It knows nothing of bandwidth, copy time or what is already in place: :meth:`EplbPlacement.migration`
says how many weight copies it implies against a baseline placement and how long they take.

The map follows EPLB's format: ``phy2log [L, P]`` (physical slot ``p`` lives on rank ``p // (P/G)``),
``logcnt [L, E]``, ``log2phy [L, E, max]`` (-1 padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cost import CostParams
from ..errors import LoadsError, TopologyError
from ..topology import Topology
from ..window import copies_that_fit, copy_times_us


@dataclass(frozen=True)
class Migration:
    """Weight copies a placement implies against a baseline: ``copies [L]`` (expert, rank) pairs
    hosted that the baseline does not host; ``time_us [L]`` the longest rank's copy time at the
    card's bandwidths (each copy from a baseline host, one in the destination's node when there is
    one), the window a per-batch plan would need for them; ``outside [L]`` how many copies do not
    fit ``window_us`` by the copy-fit rule (per rank, end and link kind, the excess over what fits;
    the larger of the sending and receiving sums); ``all_layers_us``: every layer moved at once, the
    longest rank's time for all its copies (what a synchronous re-placement stalls for)."""

    copies: np.ndarray
    time_us: np.ndarray
    outside: np.ndarray
    all_layers_us: float = 0.0  # every layer's copies at once: the longest rank's time (a full re-placement)


@dataclass(frozen=True)
class EplbPlacement:
    """A per-layer EPLB map for ``num_ranks`` ranks (see the module doc)."""

    phy2log: np.ndarray
    logcnt: np.ndarray
    num_ranks: int
    hierarchical: bool

    @property
    def slots_per_rank(self) -> int:
        return self.phy2log.shape[1] // self.num_ranks

    @property
    def log2phy(self) -> np.ndarray:
        """``[L, E, max replicas]`` physical slots of each expert, -1 padded."""
        L, P = self.phy2log.shape
        E = self.logcnt.shape[1]
        out = np.full((L, E, int(self.logcnt.max(initial=1))), -1, dtype=np.int64)
        for lay in range(L):
            order = np.argsort(self.phy2log[lay], kind="stable")
            e = self.phy2log[lay, order]
            out[lay, e, np.arange(P) - np.searchsorted(e, e)] = order
        return out

    def hosts(self, layer: int) -> np.ndarray:
        """``[G, E]`` bool: which ranks hold each expert in ``layer``."""
        out = np.zeros((self.num_ranks, self.logcnt.shape[1]), dtype=bool)
        out[np.arange(self.phy2log.shape[1]) // self.slots_per_rank, self.phy2log[layer]] = True
        return out

    def topology(self, base: Topology, layer: int) -> Topology:
        """``base`` with this layer's placement as its native one and no spare slots: the cluster as
        the engine runs it until the next re-placement."""
        return base.with_(placement=self.hosts(layer), slots=0)

    def migration(self, base: Topology, window_us: float = 0.0, previous: EplbPlacement | None = None) -> Migration:
        """The copies from ``base``'s native placement (or, per layer, from the ``previous`` map's)
        to this one (see :class:`Migration`)."""
        p = CostParams.from_topology(base)
        node = base.node_of
        G, rpn = base.num_ranks, base.ranks_per_node
        copies, times, outside, all_src, all_dst = [], [], [], [], []
        for lay in range(self.phy2log.shape[0]):
            native = base.native if previous is None else previous.hosts(lay)
            dst, e = np.nonzero(self.hosts(lay) & ~native)
            src = np.empty_like(dst)
            for i, (d, x) in enumerate(zip(dst.tolist(), e.tolist(), strict=True)):
                have = np.flatnonzero(native[:, x])
                near = have[node[have] == node[d]]
                src[i] = near[0] if near.size else have[0]
            copies.append(dst.size)
            all_src.append(src)
            all_dst.append(dst)
            t = copy_times_us(src, dst, rpn, G, p.copy_intra_us, p.copy_inter_us)
            times.append(float(t.max(initial=0.0)))
            inter = (src // rpn) != (dst // rpn)
            excess = []
            for ends in (dst, src):
                n = 0
                for kind, unit in ((False, p.copy_intra_us), (True, p.copy_inter_us)):
                    k = np.bincount(ends[inter == kind], minlength=G)
                    n += int(np.maximum(k - copies_that_fit(unit, np.full(G, window_us), int(k.max(initial=0))), 0).sum())
                excess.append(n)
            outside.append(max(excess))
        every = copy_times_us(np.concatenate(all_src), np.concatenate(all_dst), rpn, G, p.copy_intra_us, p.copy_inter_us)
        return Migration(np.array(copies, dtype=np.int64), np.array(times), np.array(outside, dtype=np.int64),
                         float(every.max(initial=0.0)))


def replicate(load: np.ndarray, slots: int, most: int) -> np.ndarray:
    """``[n]`` replica counts: one each, then each of ``slots - n`` extra slots to the expert with
    the largest load per replica (ties: lower index), at most ``most`` replicas each."""
    n = load.shape[0]
    cnt = np.ones(n, dtype=np.int64)
    for _ in range(slots - n):
        per = np.where(cnt < most, load / cnt, -np.inf)
        cnt[int(np.argmax(per))] += 1
    return cnt


def pack(weight: np.ndarray, item: np.ndarray, packs: int) -> np.ndarray:
    """Balanced packing: ``[n]`` pack of each of ``n`` weighted items, every pack ``n / packs`` items,
    heaviest first into the lightest pack with room that does not hold the same ``item`` id
    (ties: lower pack). Where no such pack is left, an item of another id swaps out to make room."""
    n = weight.shape[0]
    size = n // packs
    where = np.full(n, -1, dtype=np.int64)
    load, count = np.zeros(packs), np.zeros(packs, dtype=np.int64)
    held = [set() for _ in range(packs)]
    for i in np.argsort(-weight, kind="stable").tolist():
        x = int(item[i])
        room = [q for q in range(packs) if count[q] < size and x not in held[q]]
        if room:
            q = min(room, key=lambda q: (load[q], q))
        else:  # every pack with room holds x: trade places with an item of a full pack that lacks x
            q = next(q for q in range(packs) if count[q] < size)
            j = next(j for j in np.flatnonzero(where >= 0).tolist()
                     if x not in held[where[j]] and int(item[j]) not in held[q])
            p = int(where[j])
            held[p].discard(int(item[j]))
            load[p] -= weight[j]
            count[p] -= 1
            where[j] = q
            held[q].add(int(item[j]))
            load[q] += weight[j]
            count[q] += 1
            q = p
        where[i] = q
        held[q].add(x)
        load[q] += weight[i]
        count[q] += 1
    return where


def _place_layer(load: np.ndarray, G: int, rpn: int, slots_per_rank: int, groups: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(phy2log [P], logcnt [E])`` of one layer; ``groups`` None: global."""
    E = load.shape[0]
    P = G * slots_per_rank
    if groups is None:
        cnt = replicate(load, P, most=G)
        log = np.repeat(np.arange(E), cnt)
        rank = pack(load[log] / cnt[log], log, G)
    else:
        nodes = G // rpn
        size = E // groups
        group_of = np.arange(E) // size
        node_of_group = pack(np.bincount(group_of, weights=load, minlength=groups), np.arange(groups), nodes)
        cnt = np.zeros(E, dtype=np.int64)
        log_parts, rank_parts = [], []
        for nd in range(nodes):
            experts = np.flatnonzero(node_of_group[group_of] == nd)
            c = replicate(load[experts], P // nodes, most=rpn)
            cnt[experts] = c
            log = np.repeat(experts, c)
            log_parts.append(log)
            rank_parts.append(nd * rpn + pack(load[log] / cnt[log], log, rpn))
        log, rank = np.concatenate(log_parts), np.concatenate(rank_parts)
    # physical slots rank by rank, experts ascending within a rank
    order = np.lexsort((log, rank))
    return log[order].astype(np.int64), cnt


def eplb_placement(totals: np.ndarray, topology: Topology, redundant: int, hierarchical: bool = False,
                   groups: int | None = None) -> EplbPlacement:
    """EPLB-style placement from per-expert load ``totals`` (``[E]`` or ``[L, E]``, a history window's
    sums) with ``redundant`` extra physical slots over ``topology``'s ranks (``E + redundant`` must be
    a multiple of the rank count). ``hierarchical``: ``groups`` contiguous expert groups (default:
    one per node) packed onto nodes first; it needs ``E`` divisible by ``groups``, ``groups`` by the
    node count and each node's slots to hold its experts once."""
    t = np.asarray(totals)
    if t.dtype.kind not in "iuf" or t.ndim not in (1, 2):
        raise LoadsError(f"totals must be a real [E] or [L, E] array, got {t.dtype}{list(t.shape)}")
    t = np.atleast_2d(t.astype(np.float64))
    G, E, rpn = topology.num_ranks, topology.num_experts, topology.ranks_per_node
    if t.shape[1] != E:
        raise LoadsError(f"totals have {t.shape[1]} experts, the model {E}")
    if not np.isfinite(t).all() or (t < 0).any():
        raise LoadsError("totals must be finite and >= 0")
    if isinstance(redundant, bool) or not isinstance(redundant, (int, np.integer)) or redundant < 0:
        raise TopologyError(f"redundant slots must be an integer >= 0, got {redundant!r}")
    P = E + int(redundant)
    if P % G:
        raise TopologyError(f"E + redundant = {P} physical slots must be a multiple of the {G} ranks")
    if P > E * G:
        raise TopologyError(f"{P} physical slots exceed one copy of every expert on every rank ({E * G})")
    nodes = topology.num_nodes
    if hierarchical:
        groups = nodes if groups is None else groups
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1 or E % groups or groups % nodes:
            raise TopologyError(f"hierarchical EPLB needs E ({E}) divisible by groups ({groups!r}) and groups by the {nodes} nodes")
        if P // nodes < E // nodes or P // nodes > (E // nodes) * rpn:
            raise TopologyError(f"a node's {P // nodes} slots must hold its {E // nodes} experts at least once and at most once per rank")
    per = [_place_layer(row, G, rpn, P // G, groups if hierarchical else None) for row in t]
    return EplbPlacement(np.stack([p for p, _ in per]), np.stack([c for _, c in per]), G, hierarchical)
