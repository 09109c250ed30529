"""Expert maps — long-lived placements — in the serving engines' formats, both ways.

The one in-memory form is :class:`probe_planner.baselines.eplb.EplbPlacement`: ``phy2log [L, P]``
int64, physical slot ``p`` on rank ``p // (P/G)``. Files:

- ``eplb`` (``.npz``): ``phy2log``, ``log2phy [L, E, max]`` (-1 padded), ``logcnt [L, E]``, int64 —
  DeepSeek EPLB's return values; ``eplb-pt`` (``.pt``): the same tensors saved by torch (torch is
  imported only for ``.pt`` files);
- ``sglang`` (``.json``): ``{"physical_to_logical_map": [[...], ...]}``, what SGLang's
  ``--init-expert-location`` reads;
- ``trtllm`` (``.yaml``): ``num_slots`` (slots over all ranks) and ``initial_global_assignments``
  ``{MoE layer index: [expert per slot]}`` (layers in index order; ``ep_size`` checked against the
  ranks, ``layer_updates_per_iter`` ignored), TensorRT-LLM's load-balancer config (written as plain
  YAML; read by a strict reader of that layout, PyYAML only for other layouts when installed).

Load windows come in as a plain ``[T, L, E]`` array (``.npy`` / ``.npz``) or SGLang's
expert-distribution recorder dump (``logical_count [X, L, E]``, ``.pt`` or ``.npz``). Every map is
validated (:func:`from_phy2log`): a malformed or mismatched one raises :class:`MapError` naming the
field, never a wrong map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .baselines.eplb import EplbPlacement
from .errors import MapError

FORMATS = {".npz": "eplb", ".pt": "eplb-pt", ".json": "sglang", ".yaml": "trtllm", ".yml": "trtllm"}


def from_phy2log(phy2log, num_ranks: int, num_experts: int) -> EplbPlacement:
    """A validated map: ``phy2log`` ``[L, P]`` (or ``[P]``: one layer) integer expert ids for
    ``num_ranks`` ranks and ``num_experts`` experts — ``P`` a multiple of the ranks (equal slots per
    rank), every expert present in every layer, no expert twice on one rank."""
    if isinstance(num_ranks, bool) or not isinstance(num_ranks, (int, np.integer)) or num_ranks < 1:
        raise MapError(f"num_ranks must be an integer >= 1, got {num_ranks!r}")
    try:
        a = np.asarray(phy2log)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MapError(f"phy2log must be a rectangular integer [L, P] array: {exc}") from exc
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.dtype.kind not in "iu" or a.size == 0:
        raise MapError(f"phy2log must be a non-empty integer [L, P] array, got {a.dtype}{list(a.shape)}")
    L, P = a.shape
    if P % num_ranks:
        raise MapError(f"phy2log has {P} physical slots per layer: not a multiple of the {num_ranks} ranks (unequal slots per rank)")
    if a.min() < 0 or a.max() >= num_experts:
        raise MapError(f"phy2log holds expert ids in [{a.min()}, {a.max()}], outside [0, {num_experts})")
    a = a.astype(np.int64)
    per = P // num_ranks
    for lay in range(L):
        missing = np.setdiff1d(np.arange(num_experts), a[lay])
        if missing.size:
            raise MapError(f"phy2log layer {lay}: experts {missing[:8].tolist()} have no slot")
        slots = np.sort(a[lay].reshape(num_ranks, per), axis=1)
        dup = np.argwhere(slots[:, 1:] == slots[:, :-1])
        if dup.size:
            r, j = dup[0]
            raise MapError(f"phy2log layer {lay}: rank {r} holds expert {slots[r, j]} twice")
    logcnt = np.stack([np.bincount(row, minlength=num_experts) for row in a])
    return EplbPlacement(a, logcnt, num_ranks, hierarchical=False)


def save_map(m: EplbPlacement, path: str | Path, fmt: str | None = None, layer_ids: list[int] | None = None) -> Path:
    """Write ``m`` to ``path`` in ``fmt`` (default: by the extension, :data:`FORMATS`).
    ``layer_ids``: the model's indices of the map's layers (TensorRT-LLM keys its assignments by MoE
    layer index, e.g. from 3 when the first layers are dense; default 0..L-1)."""
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix)
    if fmt == "eplb":
        with open(path, "wb") as fh:  # np.savez on a name would add ".npz" to it
            np.savez(fh, phy2log=m.phy2log, log2phy=m.log2phy, logcnt=m.logcnt)
    elif fmt == "eplb-pt":
        torch = _torch(path)
        torch.save({k: torch.as_tensor(v) for k, v in (("phy2log", m.phy2log), ("log2phy", m.log2phy), ("logcnt", m.logcnt))}, path)
    elif fmt == "sglang":
        path.write_text(json.dumps({"physical_to_logical_map": m.phy2log.tolist()}))
    elif fmt == "trtllm":
        ids = list(range(m.phy2log.shape[0])) if layer_ids is None else [int(i) for i in layer_ids]
        if len(ids) != m.phy2log.shape[0] or len(set(ids)) != len(ids):
            raise MapError(f"layer_ids must be {m.phy2log.shape[0]} distinct layer indices, got {layer_ids!r}")
        lines = [f"num_slots: {m.phy2log.shape[1]}", "initial_global_assignments:"]
        lines += [f"  {lay}: [{', '.join(map(str, row.tolist()))}]" for lay, row in zip(ids, m.phy2log, strict=True)]
        path.write_text("\n".join(lines) + "\n")
    else:
        raise MapError(f"unknown map format {fmt!r} for {path}; have {sorted(set(FORMATS.values()))}")
    return path


def load_map(path: str | Path, num_ranks: int, num_experts: int, fmt: str | None = None,
             num_layers: int | None = None) -> EplbPlacement:
    """Read a map written by an engine or :func:`save_map` and validate it for the cluster
    (``num_layers``: the layers it must hold, when known)."""
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix)
    try:
        if fmt == "eplb":
            with np.load(path, allow_pickle=False) as z:
                if "phy2log" not in z.files:
                    raise MapError(f"{path}: no phy2log array (have {z.files})")
                arrays = {k: z[k] for k in z.files}
        elif fmt == "eplb-pt":
            torch = _torch(path)
            d = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(d, dict) or "phy2log" not in d:
                raise MapError(f"{path}: expected a dict with phy2log")
            arrays = {k: np.asarray(v) for k, v in d.items()}
        elif fmt == "sglang":
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict) or "physical_to_logical_map" not in doc:
                raise MapError(f"{path}: expected {{\"physical_to_logical_map\": [[...], ...]}}")
            arrays = {"phy2log": _rect(doc["physical_to_logical_map"], "physical_to_logical_map")}
        elif fmt == "trtllm":
            arrays = {"phy2log": _trtllm(path.read_text(), path, num_ranks)}
        else:
            raise MapError(f"unknown map format {fmt!r} for {path}; have {sorted(set(FORMATS.values()))}")
    except MapError:
        raise
    except Exception as exc:  # a corrupt file of any kind (zip, pickle, JSON, YAML, dtype): one clear error
        raise MapError(f"cannot read map {path}: {type(exc).__name__}: {exc}") from exc
    m = from_phy2log(arrays["phy2log"], num_ranks, num_experts)
    if num_layers is not None and m.phy2log.shape[0] != num_layers:
        raise MapError(f"{path} holds {m.phy2log.shape[0]} layers, the model {num_layers}")
    if "logcnt" in arrays and not np.array_equal(np.asarray(arrays["logcnt"]), m.logcnt):
        raise MapError(f"{path}: logcnt does not match phy2log")
    if "log2phy" in arrays and not _same_log2phy(np.asarray(arrays["log2phy"]), m):
        raise MapError(f"{path}: log2phy does not match phy2log")
    return m


def _same_log2phy(given: np.ndarray, m: EplbPlacement) -> bool:
    """Whether ``given`` lists each expert's physical slots (any order, -1 padding of any width
    that holds them: engines pad to the redundancy + 1 and list replicas as they made them)."""
    want = m.log2phy
    if given.ndim != 3 or given.shape[:2] != want.shape[:2] or given.shape[2] < want.shape[2]:
        return False
    g = np.sort(np.where(given < 0, np.iinfo(np.int64).max, given.astype(np.int64)), axis=2)[:, :, :want.shape[2]]
    w = np.sort(np.where(want < 0, np.iinfo(np.int64).max, want), axis=2)
    return bool(np.array_equal(g, w) and (np.sort(given, axis=2)[:, :, :given.shape[2] - want.shape[2]] < 0).all())


def load_window(path: str | Path) -> np.ndarray:
    """A load window ``[T, L, E]`` float64: a plain array (``.npy``, or ``.npz`` with one array or
    ``logical_count``) or SGLang's expert-distribution dump (``logical_count [X, L, E]``, ``.pt``)."""
    path = Path(path)
    try:
        if path.suffix == ".pt":
            d = _torch(path).load(path, map_location="cpu", weights_only=True)
            a = np.asarray(d["logical_count"] if isinstance(d, dict) else d)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                key = "logical_count" if "logical_count" in z.files else (z.files[0] if len(z.files) == 1 else None)
                if key is None:
                    raise MapError(f"{path}: expected logical_count or a single array, have {z.files}")
                a = z[key]
        else:
            a = np.load(path, allow_pickle=False)
    except MapError:
        raise
    except Exception as exc:  # as for maps: any corrupt file is one clear error
        raise MapError(f"cannot read load window {path}: {type(exc).__name__}: {exc}") from exc
    if a.ndim != 3 or a.dtype.kind not in "iuf" or not np.isfinite(a).all() or (a < 0).any():
        raise MapError(f"{path}: a load window must be finite >= 0 [T, L, E] numbers, got {a.dtype}{list(a.shape)}")
    return a.astype(np.float64)


def _torch(path: Path):
    try:
        import torch
    except ImportError as exc:
        raise MapError(f"{path}: .pt files need torch (pip install torch); use .npz otherwise") from exc
    return torch


def _rect(rows, what: str) -> np.ndarray:
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise MapError(f"{what} must be a list of per-layer lists")
    if len({len(r) for r in rows}) != 1:
        raise MapError(f"{what}: layers have different slot counts {sorted({len(r) for r in rows})}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for r in rows for v in r):
        raise MapError(f"{what} must hold integer expert ids")
    return np.array(rows, dtype=np.int64)


def _trtllm(text: str, path: Path, num_ranks: int) -> np.ndarray:
    """``phy2log`` from TensorRT-LLM's load-balancer YAML, checked against its ``num_slots``."""
    try:  # the layout TensorRT-LLM's docs and save_map write, checked strictly (duplicate layers too)
        doc = _mini_yaml(text, path)
    except _OtherLayout:  # anything else YAML allows: PyYAML, when installed
        try:
            import yaml
        except ImportError:
            raise
        doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or "num_slots" not in doc or "initial_global_assignments" not in doc:
        raise MapError(f"{path}: expected num_slots and initial_global_assignments")
    ga, slots = doc["initial_global_assignments"], doc["num_slots"]
    if isinstance(slots, bool) or not isinstance(slots, int):
        raise MapError(f"{path}: num_slots must be an integer, got {slots!r}")
    if not isinstance(ga, dict) or not ga or not all(isinstance(k, int) and not isinstance(k, bool) for k in ga):
        raise MapError(f"{path}: initial_global_assignments must map integer layer indices to slot lists")
    if "ep_size" in doc and doc["ep_size"] != num_ranks:
        raise MapError(f"{path}: ep_size is {doc['ep_size']!r}, the cluster has {num_ranks} ranks")
    rows = _rect([ga[k] for k in sorted(ga)], "initial_global_assignments")  # MoE layers in index order
    if rows.shape[1] != slots:
        raise MapError(f"{path}: num_slots is {slots} but layers list {rows.shape[1]} slots")
    return rows


class _OtherLayout(MapError):
    """A YAML layout the strict reader does not know (PyYAML may)."""


def _mini_yaml(text: str, path: Path) -> dict:
    """Exactly the layout :func:`save_map` writes (no PyYAML here)."""
    doc, ga = {}, None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.strip().partition(":")
        if not sep:
            raise _OtherLayout(f"{path} line {n}: expected 'key: value' (install PyYAML for other layouts)")
        if line.startswith(" ") and ga is not None:
            try:
                layer, row = int(key), json.loads(value.strip())
            except ValueError as exc:
                raise MapError(f"{path} line {n}: expected 'layer: [expert, ...]'") from exc
            if layer in ga:
                raise MapError(f"{path} line {n}: layer {layer} listed twice")
            ga[layer] = row
        elif key == "num_slots":
            try:
                doc["num_slots"] = int(value)
            except ValueError as exc:
                raise MapError(f"{path} line {n}: num_slots must be an integer") from exc
        elif key == "initial_global_assignments" and not value.strip():
            ga = doc["initial_global_assignments"] = {}
        elif key in ("layer_updates_per_iter", "ep_size"):  # TensorRT-LLM's other keys
            try:
                doc[key] = int(value)
            except ValueError as exc:
                raise MapError(f"{path} line {n}: {key} must be an integer") from exc
        else:
            raise _OtherLayout(f"{path} line {n}: unexpected {key!r} (install PyYAML for other layouts)")
    return doc
