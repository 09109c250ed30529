"""Built-in model and cluster cards (TOML files shipped as package data) and their loaders."""

from __future__ import annotations

import tomllib
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
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise CardError(f"card file {str(path)!r} does not exist")
        text = path.read_text()
    else:
        entry = _card_dir(kind).joinpath(f"{ref}.toml")
        if not entry.is_file():
            raise CardError(f"no built-in {kind} card named {str(ref)!r}; known: {', '.join(card_names(kind))}")
        text = entry.read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"card {str(ref)!r} is not valid TOML: {exc}") from exc


def load_model_card(ref: str | Path) -> ModelShape:
    """A :class:`ModelShape` from a built-in model card name or a TOML path."""
    data = _read_card(ref, "moe")
    known = set(ModelShape.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise CardError(f"model card {str(ref)!r} has unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    try:
        return ModelShape(**data)
    except TypeError as exc:
        raise CardError(f"model card {str(ref)!r} is incomplete: {exc}") from exc
    except TopologyError as exc:
        raise CardError(f"model card {str(ref)!r}: {exc}") from exc


def load_cluster_card(ref: str | Path) -> dict:
    """Topology keyword arguments (SI units) from a built-in cluster card name or a TOML path."""
    data = _read_card(ref, "clusters")
    expected = set(_CLUSTER_UNITS) | set(_CLUSTER_PLAIN)
    unknown, missing = set(data) - expected, expected - set(data) - {"slots", "name"}
    if unknown or missing:
        raise CardError(f"cluster card {str(ref)!r}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    out = {k: data[k] for k in _CLUSTER_PLAIN if k in data}
    for key, (field, factor) in _CLUSTER_UNITS.items():
        value = data[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CardError(f"cluster card {str(ref)!r}: {key} must be a number, got {value!r}")
        out[field] = float(value) * factor
    return out
