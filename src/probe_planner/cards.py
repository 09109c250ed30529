"""Built-in model and cluster cards (TOML files shipped as package data) and their loaders.

A card is a built-in name (``card_names(kind)``) or a path to a UTF-8 TOML file. Every problem with
one (missing, unreadable, not UTF-8, not TOML, unknown or missing keys, a value of the wrong type
or out of range) raises :class:`CardError` naming the card and the key.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import MISSING
from importlib import resources
from pathlib import Path

from .errors import CardError, TopologyError
from .topology import ModelShape

_CLUSTER_UNITS = {  # card key -> (Topology field, factor to SI)
    "intra_node_GBps": ("intra_node_bw", 1e9),
    "inter_node_GBps": ("inter_node_bw", 1e9),
    "peak_tflops": ("peak_flops", 1e12),
    "hbm_TBps": ("hbm_bw", 1e12),
}
_CLUSTER_PLAIN = ("name", "num_ranks", "ranks_per_node", "slots")


def _card_dir(kind: str):
    return resources.files("probe_planner._cards").joinpath(kind)


def card_names(kind: str) -> list[str]:
    """Names of the built-in cards of ``kind`` (``"clusters"`` or ``"moe"``)."""
    return sorted(p.name[:-5] for p in _card_dir(kind).iterdir() if p.name.endswith(".toml"))


def _read_card(ref: str | Path, kind: str) -> dict:
    if not isinstance(ref, (str, os.PathLike)):
        raise CardError(f"a {kind} card must be a built-in name or a .toml path, got {type(ref).__name__} {ref!r:.80}")
    path = Path(ref)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise CardError(f"card file {str(path)!r} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CardError(f"cannot read card file {str(path)!r}: {exc}") from exc
    else:
        entry = _card_dir(kind).joinpath(f"{ref}.toml")
        if not entry.is_file():
            raise CardError(f"no built-in {kind} card named {str(ref)!r}; known: {', '.join(card_names(kind))}")
        raw = entry.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CardError(f"card {str(ref)!r} is not UTF-8 text: {exc}") from exc
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise CardError(f"card {str(ref)!r} is not valid TOML: {exc}") from exc


def load_model_card(ref: str | Path) -> ModelShape:
    """A :class:`ModelShape` from a built-in model card name or a TOML path.

    The card holds :class:`ModelShape`'s fields (``name``, ``num_experts``, ``top_k``, ``hidden``,
    ``expert_ffn`` required; the others optional) with the types and ranges it documents.
    """
    data = _read_card(ref, "moe")
    fields = ModelShape.__dataclass_fields__
    unknown = set(data) - set(fields)
    missing = {k for k, f in fields.items() if f.default is MISSING} - set(data)
    if unknown:
        raise CardError(f"model card {str(ref)!r} has unknown keys {sorted(unknown)}; expected some of {sorted(fields)}")
    if missing:
        raise CardError(f"model card {str(ref)!r} is incomplete: missing keys {sorted(missing)}")
    try:
        return ModelShape(**data)
    except TopologyError as exc:
        raise CardError(f"model card {str(ref)!r}: {exc}") from exc


def load_cluster_card(ref: str | Path) -> dict:
    """Topology keyword arguments (SI units) from a built-in cluster card name or a TOML path.

    Keys: ``num_ranks``, ``ranks_per_node`` (integers), the rates ``intra_node_GBps``,
    ``inter_node_GBps``, ``peak_tflops``, ``hbm_TBps`` (finite numbers > 0); optional ``slots``
    (integer) and ``name`` (string). Range and consistency checks are :class:`Topology`'s.
    """
    data = _read_card(ref, "clusters")
    expected = set(_CLUSTER_UNITS) | set(_CLUSTER_PLAIN)
    unknown, missing = set(data) - expected, expected - set(data) - {"slots", "name"}
    if unknown or missing:
        raise CardError(f"cluster card {str(ref)!r}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    out = {k: data[k] for k in _CLUSTER_PLAIN if k in data}
    if "name" in out and not isinstance(out["name"], str):
        raise CardError(f"cluster card {str(ref)!r}: name must be a string, got {out['name']!r:.80}")
    for key in ("num_ranks", "ranks_per_node", "slots"):
        value = out.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CardError(f"cluster card {str(ref)!r}: {key} must be an integer, got {value!r:.80}")
    for key, (field, factor) in _CLUSTER_UNITS.items():
        value = data[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CardError(f"cluster card {str(ref)!r}: {key} must be a number, got {value!r:.80}")
        try:
            si = float(value) * factor
        except OverflowError:  # an int beyond 1.8e308
            si = math.inf
        if not (math.isfinite(si) and si > 0):
            raise CardError(f"cluster card {str(ref)!r}: {key} must be a finite number > 0, got {value!r:.80}")
        out[field] = si
    return out
