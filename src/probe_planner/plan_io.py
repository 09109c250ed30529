"""Lossless plan files: JSON (readable) and NPZ (compact). A loaded plan is validated."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .budget import Budget
from .errors import PlanFileError, PlanInvalidError, PlannerError
from .plan import Plan
from .topology import Topology

FORMAT = "probe-plan"
VERSION = 1


def _meta(plan: Plan) -> dict:
    info = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in plan.info.items()}
    return {"format": FORMAT, "version": VERSION, "solver": plan.solver, "solve_time_s": plan.solve_time_s,
            "info": info, "topology": plan.topology.to_dict(), "budget": plan.budget.to_dict()}


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan`` to ``path``; the suffix picks the format (``.json`` or ``.npz``)."""
    path = Path(path)
    meta = _meta(plan)
    if path.suffix == ".json":
        doc = dict(meta, loads={"shape": list(plan.loads.shape), "values": plan.loads.ravel().tolist()},
                   replicas=plan.replicas.tolist(),
                   routes={"index": plan.route_idx.tolist(), "tokens": plan.route_tok.tolist()})
        path.write_text(json.dumps(doc))
    elif path.suffix == ".npz":
        with path.open("wb") as fh:
            np.savez_compressed(fh, meta=np.array(json.dumps(meta)), loads=plan.loads, replicas=plan.replicas,
                                route_idx=plan.route_idx, route_tok=plan.route_tok)
    else:
        raise PlanFileError(f"plan file {str(path)!r}: suffix must be .json or .npz")
    return path


def _array(value, dtype, name: str, shape_tail: tuple[int, ...] | None = None) -> np.ndarray:
    """Field ``name`` as a ``dtype`` array (``[N, *shape_tail]`` when given); PlanFileError unless it
    is numeric and, for an integer field, holds whole numbers only (``1.5`` is refused, never
    truncated). Loads are checked by :func:`_loads`, route tokens by the plan check."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise PlanFileError(f"field {name!r} is not a numeric array: {exc}") from exc
    if arr.dtype.kind not in "iuf":
        raise PlanFileError(f"field {name!r} is not a numeric array (it holds {arr.dtype} values)")
    if shape_tail is not None:
        if arr.size == 0:
            arr = arr.reshape((0, *shape_tail))
        if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
            raise PlanFileError(f"field {name!r} has shape {list(arr.shape)}, expected [N, {', '.join(map(str, shape_tail))}]")
    if np.dtype(dtype).kind == "i" and arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(arr) & (arr == np.floor(arr)) & (np.abs(arr) <= 2.0 ** 53)
        if not whole.all():
            at = tuple(int(i) for i in np.argwhere(~whole)[0])
            raise PlanFileError(f"field {name!r} holds {float(arr[at])!r} at {list(at)}: indices must be whole numbers")
    elif np.dtype(dtype).kind == "i" and arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise PlanFileError(f"field {name!r} holds {arr.max()} beyond the int64 range")
    return np.asarray(arr, dtype=dtype)


def _loads(arr: np.ndarray, name: str) -> np.ndarray:
    """Loads must be finite and ``>= 0`` (an edited file may say NaN, Infinity or -3)."""
    bad = ~(np.isfinite(arr) & (arr >= 0))
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise PlanFileError(f"field {name!r} holds {float(arr[at])!r} at {list(at)}: loads must be finite and >= 0")
    return arr


def load_plan(path: str | Path) -> Plan:
    """Read a plan written by :func:`save_plan`; raise :class:`PlanFileError` on a corrupt file and
    :class:`PlanInvalidError` when the content breaks a plan invariant."""
    path = Path(path)
    if not path.is_file():
        raise PlanFileError(f"plan file {str(path)!r} does not exist")
    try:
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            meta = doc
            loads_doc = doc["loads"]
            loads = _array(loads_doc["values"], np.float64, "loads")
            shape = loads_doc["shape"]
            if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
                raise PlanFileError(f"field 'loads.shape' must be a list of whole numbers, got {shape!r}")
            shape = tuple(shape)
            if len(shape) != 3 or loads.ndim != 1 or loads.size != int(np.prod(shape)):
                raise PlanFileError(f"loads hold {loads.size} values, shape says {list(shape)}")
            loads = loads.reshape(shape)
            replicas = _array(doc["replicas"], np.int64, "replicas", (4,))
            route_idx = _array(doc["routes"]["index"], np.int64, "routes.index", (4,))
            route_tok = _array(doc["routes"]["tokens"], np.float64, "routes.tokens")
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                loads = _array(z["loads"], np.float64, "loads")
                replicas = _array(z["replicas"], np.int64, "replicas", (4,))
                route_idx = _array(z["route_idx"], np.int64, "route_idx", (4,))
                route_tok = _array(z["route_tok"], np.float64, "route_tok")
            if loads.ndim != 3:
                raise PlanFileError(f"loads have shape {list(loads.shape)}, expected [L, G, E]")
        else:
            raise PlanFileError(f"plan file {str(path)!r}: suffix must be .json or .npz")
        if meta.get("format") != FORMAT:
            raise PlanFileError(f"not a probe-plan file (format={meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise PlanFileError(f"plan file version {meta.get('version')!r} is not supported (expected {VERSION})")
        topology = Topology.from_dict(meta["topology"])
        budget = Budget(**meta["budget"])
        if loads.shape[1:] != (topology.num_ranks, topology.num_experts):
            raise PlanFileError(f"loads shape {list(loads.shape)} does not match the stored topology "
                                f"({topology.num_ranks} ranks, {topology.num_experts} experts)")
        _loads(loads, "loads")
        plan = Plan(topology, budget, loads, replicas, route_idx, route_tok, solver=str(meta["solver"]),
                    solve_time_s=float(meta["solve_time_s"]), info=meta.get("info", {}))
    except (PlanFileError, PlanInvalidError):
        raise
    except PlannerError as exc:
        raise PlanFileError(f"plan file {str(path)!r} holds an inconsistent topology or budget: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise PlanFileError(f"plan file {str(path)!r} is missing or mangles field {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise PlanFileError(f"plan file {str(path)!r} is corrupt: {exc}") from exc
    return plan.validate()
