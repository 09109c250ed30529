"""Bad input at the front door gets a PlannerError subclass naming the problem: never a raw
TypeError/ValueError/OverflowError/UnicodeDecodeError, a hang, or silent acceptance."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from probe_planner import Budget, BudgetError, CardError, LoadsError, ModelShape, PlannerError, Topology, TopologyError, solve
from probe_planner.cards import load_cluster_card, load_model_card
from probe_planner.loads import MAX_LOAD_TOTAL, canonical_loads
from probe_planner.topology import MAX_COUNT, MAX_HOST_ENTRIES

from .conftest import make_topology

TOPO = make_topology(1, 2, 2, slots=1)  # G=2, E=4

# Anything a caller might pass by mistake: scalars of every kind, strings, containers, nestings.
GARBAGE_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.complex_numbers(),
    st.text(max_size=5), st.binary(max_size=5), st.just(np.bool_(True)), st.just(np.float32(1.5)), st.just(np.int8(-3)),
    st.just(np.datetime64("2024-01-01")), st.just(object()),
)
GARBAGE = st.recursive(GARBAGE_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(st.text(max_size=3), inner, max_size=2)),
    max_leaves=12)


# --- loads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("loads, match", [
    (np.full((2, 4), "1"), "dtype <U1 \\(string\\)"),
    (np.full((2, 4), b"1"), "dtype \\|S1 \\(bytes\\)"),
    (np.ones((2, 4), dtype=bool), "dtype bool \\(boolean\\)"),
    (np.ones((2, 4), dtype=complex), "dtype complex128 \\(complex\\)"),
    (np.ones((2, 4), dtype="datetime64[s]"), "datetime64\\[s\\] \\(datetime\\)"),
    (np.ones((2, 4), dtype="timedelta64[ms]"), "timedelta64\\[ms\\] \\(timedelta\\)"),
    (np.ones((2, 4), dtype=object), "dtype object"),
    (np.zeros((2, 4), dtype=[("a", "f8")]), "structured"),
    (np.ma.masked_array(np.ones((2, 4)), mask=np.eye(2, 4)), "masked array"),
    (np.ma.masked_array(np.ones((2, 4))), "masked array"),  # nothing masked: still refused, not silently unmasked
])
def test_loads_of_a_non_real_dtype_are_refused(loads, match):
    with pytest.raises(LoadsError, match=match):
        canonical_loads(loads, TOPO)
    with pytest.raises(LoadsError, match=match):
        solve(loads, TOPO, Budget(window_us=1.0))


@pytest.mark.parametrize("loads, match", [
    ([[1, None, 2, 3]] * 2, "dtype object"),
    ([[1, "2", 3, 4]] * 2, "string"),
    ([[True, 1, 2, 3]] * 2, "not booleans"),
    ([[1.5, 2.0, np.bool_(False), 3.0]] * 2, "not booleans"),
    ([np.array([1.0, 2, 3, 4]), np.array([True, False, True, False])], "not booleans"),
    ([[10**30, 1, 2, 3]] * 2, "integers beyond int64"),
    ([[1, 2, 3, 4], [1, 2]], "rectangular"),
    ([[1, 2j, 3, 4]] * 2, "complex"),
    ({"loads": [1, 2, 3, 4]}, "got dict"),
    (None, "got NoneType"),
    ("1234", "got str"),
    (b"1234", "got bytes"),
    ({1, 2, 3, 4}, "got set"),
    (object(), "dtype object"),
])
def test_loads_of_non_numbers_are_refused(loads, match):
    with pytest.raises(LoadsError, match=match):
        canonical_loads(loads, TOPO)


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint8, np.uint64, np.float16, np.float32, np.float64])
def test_real_numeric_dtypes_are_accepted(dtype):
    arr, integral = canonical_loads(np.arange(8).reshape(2, 4).astype(dtype), TOPO)
    assert arr.dtype == np.float64 and arr.shape == (1, 2, 4) and integral
    arr, _ = canonical_loads([[0, 1, 2, 3], [4.5, 5, 6, 7]], TOPO)
    assert arr[0, 1, 0] == 4.5


def test_max_load_total_is_the_exact_float64_integer_limit():
    assert MAX_LOAD_TOTAL == 2.0**53
    assert MAX_LOAD_TOTAL + 1.0 == MAX_LOAD_TOTAL  # the first integer float64 cannot tell apart


@pytest.mark.parametrize("loads, match", [
    (np.full((2, 4), 1e25), "entry 1e\\+25 at index \\[0, 0\\] exceeds MAX_LOAD_TOTAL = 2\\*\\*53"),
    (np.full((2, 4), 1e30), "exceeds MAX_LOAD_TOTAL"),
    (np.array([[1e308, 1e308, 0, 0]] * 2), "exceeds MAX_LOAD_TOTAL"),  # would sum to inf
    (np.full((2, 4), 2.0**53 / 7), "layer 0 total .* above MAX_LOAD_TOTAL"),  # entries fine, the layer is not
    (np.array([[2**53, 1, 0, 0], [0, 0, 0, 0]], dtype=np.int64), "layer 0 total"),  # one token over, exactly
    (np.arange(4, dtype=np.uint64) * np.uint64(2**62), "exceeds MAX_LOAD_TOTAL"),
    (np.concatenate([np.ones((1, 2, 4)), np.full((1, 2, 4), 2.0**51)]), "layer 1 total"),
])
def test_loads_above_the_exact_limit_are_refused(loads, match):
    with pytest.raises(LoadsError, match=match):
        canonical_loads(loads, TOPO)


def test_uniform_layer_totals_are_limited_too():
    with pytest.raises(LoadsError, match="layer 1 total"):
        canonical_loads(np.array([[1.0, 1, 1, 1], [2.0**52, 2.0**52, 1, 0]]), TOPO, sources="uniform")


def test_loads_of_1e25_fail_fast_instead_of_hanging():
    start = time.perf_counter()
    with pytest.raises(LoadsError, match="MAX_LOAD_TOTAL"):
        solve(np.full((2, 4), 1e25), TOPO, Budget(window_us=np.inf), solver="greedy")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("solver", ["greedy", "static"])
@pytest.mark.parametrize("fractional", [False, True])
def test_loads_at_the_limit_are_solved(solver, fractional):
    topo = make_topology(2, 2, 2, slots=2)
    w = np.random.default_rng(1).random((4, 8))
    w[:, 0] *= 50  # a hot expert worth copying
    loads = w / w.sum() * MAX_LOAD_TOTAL * (0.999 if fractional else 1.0)
    loads = loads if fractional else np.floor(loads)
    assert loads.sum() <= MAX_LOAD_TOTAL
    plan = solve(loads, topo, Budget(window_us=np.inf, time_limit_s=5.0), solver=solver)
    assert plan.makespan_us > 0 and (solver == "static" or plan.num_replicas > 0)


def test_the_limit_is_exact_where_float64_sums_round():
    assert float(np.sum(np.array([2.0**53, 1.0]))) == 2.0**53  # the rounded sum cannot see the extra token
    canonical_loads(np.array([[2.0**53, 0, 0, 0], [0, 0, 0, 0]]), TOPO)  # exactly at the limit: accepted
    canonical_loads(np.array([[2.0**52, 2.0**52 - 1, 1, 0], [0, 0, 0, 0]]), TOPO)
    with pytest.raises(LoadsError, match="layer 0 total"):
        canonical_loads(np.array([[2.0**53, 1, 0, 0], [0, 0, 0, 0]]), TOPO)
    with pytest.raises(LoadsError, match="layer 0 total"):
        canonical_loads(np.array([[2.0**53, 0.75, 0, 0], [0, 0, 0, 0]]), TOPO)


def test_many_layers_may_total_more_than_the_limit_together():
    loads = np.full((3, 2, 4), 2.0**50)  # each layer totals 2**53; all three do not matter
    arr, integral = canonical_loads(loads, TOPO)
    assert arr.shape == (3, 2, 4) and integral


@settings(max_examples=200, deadline=None)
@given(GARBAGE)
def test_garbage_loads_raise_loads_error_or_are_valid(garbage):
    try:
        arr, integral = canonical_loads(garbage, TOPO)
    except LoadsError:
        return
    assert arr.dtype == np.float64 and arr.ndim == 3 and arr.shape[1:] == (2, 4)
    assert np.isfinite(arr).all() and (arr >= 0).all() and not isinstance(integral, np.bool_)


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(dtype=st.one_of(hnp.boolean_dtypes(), hnp.complex_number_dtypes(), hnp.unicode_string_dtypes(),
                                  hnp.byte_string_dtypes(), hnp.datetime64_dtypes(), hnp.timedelta64_dtypes()),
                  shape=st.sampled_from([(4,), (2, 4), (1, 2, 4), (3, 4)])))
def test_every_non_real_dtype_is_named(arr):
    with pytest.raises(LoadsError, match=re.escape(f"got dtype {arr.dtype}")):
        canonical_loads(arr, TOPO, sources="uniform" if arr.shape == (3, 4) else None)


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(dtype=st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes()),
                  shape=st.sampled_from([(4,), (2, 4), (2, 2, 4)])))
def test_real_arrays_are_accepted_exactly_when_in_range(arr):
    vals = arr.astype(np.float64)
    layers = vals.reshape(vals.shape[0] if vals.ndim == 3 else 1, -1)
    ok = np.isfinite(vals).all() and (vals >= 0).all() and (layers.sum(axis=1) <= MAX_LOAD_TOTAL).all()
    if ok:
        out, _ = canonical_loads(arr, TOPO)
        np.testing.assert_allclose(out.sum(), vals.sum(), rtol=1e-12)
    else:
        with pytest.raises(LoadsError, match="NaN or inf|must be >= 0|MAX_LOAD_TOTAL"):
            canonical_loads(arr, TOPO)


# --- budget ------------------------------------------------------------------------------------

@pytest.mark.parametrize("window, match", [
    ("150", "window_us must be a real number .* got '150' \\(str\\)"),
    (None, "got None \\(NoneType\\)"),
    (1j, "\\(complex\\)"),
    (True, "\\(bool\\)"),
    (np.True_, "\\(bool\\)"),
    (["a"], "window_us entries must be real numbers, got 'a'"),
    ([1.0, True], "got True \\(bool\\)"),
    ([[1.0]], "got \\[1.0\\] \\(list\\)"),
    ([], "scalar or a \\[G\\] array, got shape \\[0\\]"),
    (np.array(["a", "b"]), "got dtype <U1"),
    (np.ones(2, dtype=bool), "got dtype bool"),
    (np.ones(2, dtype=complex), "got dtype complex128"),
    (np.ma.masked_array([1.0, 2.0]), "masked array"),
    ({"a": 1.0}, "\\(dict\\)"),
    (10**400, "beyond the float64 range"),
    ([1.0, 10**400], "beyond the float64 range"),
    (-1, ">= 0"),
    (float("nan"), ">= 0"),
])
def test_bad_window(window, match):
    with pytest.raises(BudgetError, match=match):
        Budget(window_us=window)


@pytest.mark.parametrize("limit, match", [
    ("1", "time_limit_s must be a real number of seconds, got '1' \\(str\\)"),
    (None, "\\(NoneType\\)"),
    (1j, "\\(complex\\)"),
    (True, "\\(bool\\)"),
    ([1.0], "\\(list\\)"),
    (np.ones(1), "\\(ndarray\\)"),
    (math.inf, "finite number > 0, got inf"),
    (math.nan, "finite number > 0, got nan"),
    (0, "finite number > 0"),
    (-0.5, "finite number > 0"),
    (10**400, "beyond the float64 range"),
])
def test_bad_time_limit(limit, match):
    with pytest.raises(BudgetError, match=match):
        Budget(window_us=1.0, time_limit_s=limit)


def test_budget_normalizes_numbers():
    b = Budget(window_us=np.int32(5), time_limit_s=np.float32(0.5))
    assert type(b.window_us) is float and b.window_us == 5.0 and type(b.time_limit_s) is float
    assert Budget(window_us=math.inf).window_us == math.inf
    b = Budget(window_us=[1, 2.5, np.float32(3)])
    assert b.window_us.dtype == np.float64 and b.window_us.tolist() == [1.0, 2.5, 3.0]
    json.dumps(b.to_dict())


@settings(max_examples=200, deadline=None)
@given(GARBAGE, GARBAGE)
def test_garbage_budgets_raise_budget_error_or_are_valid(window, limit):
    try:
        b = Budget(window_us=window, time_limit_s=limit)
    except BudgetError:
        return
    w = np.asarray(b.window_us)
    assert w.dtype == np.float64 and w.ndim <= 1 and (w >= 0).all()
    assert type(b.time_limit_s) is float and 0 < b.time_limit_s < math.inf


# --- topology and model shape ------------------------------------------------------------------

MODEL = dict(name="m", num_experts=8, top_k=2, hidden=64, expert_ffn=32)
CLUSTER = dict(num_ranks=4, ranks_per_node=2, intra_node_bw=1e11, inter_node_bw=1e10, peak_flops=1e15, hbm_bw=1e12,
               slots=2)
WRONG = ["eight", float("nan"), float("inf"), [8], None, True, np.True_, {"n": 8}, 1j]


@pytest.mark.parametrize("value", [*WRONG, 8.5, -1, 2**70])
@pytest.mark.parametrize("field", ["num_experts", "top_k", "hidden", "expert_ffn", "moe_layers", "ffn_matrices",
                                   "shared_experts"])
def test_model_shape_int_fields(field, value):
    with pytest.raises(TopologyError, match=f"^{field} must be an integer in"):
        ModelShape(**{**MODEL, field: value})


@pytest.mark.parametrize("value", [*WRONG, 0, -2.0, 10**400])
@pytest.mark.parametrize("field", ["weight_bytes", "act_bytes"])
def test_model_shape_float_fields(field, value):
    with pytest.raises(TopologyError, match=f"^{field} must be a positive finite number"):
        ModelShape(**{**MODEL, field: value})


@pytest.mark.parametrize("value", [*WRONG, 4.5, 0, 2**70])
@pytest.mark.parametrize("field", ["num_ranks", "ranks_per_node", "slots"])
def test_topology_int_fields(field, value):
    if field == "slots" and value == 0:
        return  # zero slots is allowed
    with pytest.raises(TopologyError, match=f"^{field} must be an integer in"):
        Topology(model=ModelShape(**MODEL), **{**CLUSTER, field: value})


@pytest.mark.parametrize("value", [*WRONG, 0.0, -1e9, 10**400])
@pytest.mark.parametrize("field", ["intra_node_bw", "inter_node_bw", "peak_flops", "hbm_bw"])
def test_topology_float_fields(field, value):
    with pytest.raises(TopologyError, match=f"^{field} must be a positive finite number"):
        Topology(model=ModelShape(**MODEL), **{**CLUSTER, field: value})


@pytest.mark.parametrize("value", [5, None, b"x", ["m"]])
def test_names_must_be_strings(value):
    with pytest.raises(TopologyError, match="^name must be a string"):
        ModelShape(**{**MODEL, "name": value})
    with pytest.raises(TopologyError, match="^name must be a string"):
        Topology(model=ModelShape(**MODEL), **CLUSTER, name=value)


def test_topology_numbers_are_normalized():
    m = ModelShape(**{**MODEL, "num_experts": np.int64(8), "hidden": 64.0, "weight_bytes": np.float32(1)})
    assert type(m.num_experts) is int and type(m.hidden) is int and type(m.weight_bytes) is float
    t = Topology(model=m, **{**CLUSTER, "num_ranks": np.uint8(4), "slots": 2.0, "hbm_bw": 10**12})
    assert type(t.num_ranks) is int and type(t.slots) is int and type(t.hbm_bw) is float
    json.dumps(t.to_dict())  # numpy scalars would not serialize
    assert Topology.from_dict(json.loads(json.dumps(t.to_dict()))).to_dict() == t.to_dict()


def test_topology_size_limits():
    with pytest.raises(TopologyError, match="num_experts must be an integer in \\[1, 1048576\\]"):
        ModelShape(**{**MODEL, "num_experts": MAX_COUNT + 1})
    big = ModelShape(**{**MODEL, "num_experts": 2**14})
    with pytest.raises(TopologyError, match="exceeds MAX_HOST_ENTRIES"):
        Topology(model=big, **{**CLUSTER, "num_ranks": MAX_HOST_ENTRIES // 2**14 * 2, "ranks_per_node": 2})


@pytest.mark.parametrize("changes, match", [
    (dict(peak_flops=1e-300), "flops per token / peak_flops gives inf us"),
    (dict(intra_node_bw=1e300), "token bytes / intra_node_bw gives .* outside"),
    (dict(hbm_bw=1e-200), "expert bytes / hbm_bw"),
])
def test_cost_units_must_be_finite(changes, match):
    with pytest.raises(TopologyError, match=match):
        Topology(model=ModelShape(**MODEL), **{**CLUSTER, **changes})


@pytest.mark.parametrize("placement, match", [
    ([[1, 0], [1]], "host matrix or \\[E\\] ranks"),
    ("abc", "host matrix"),
    (np.ma.masked_array(np.ones((4, 8))), "masked array"),
    (np.ones((4, 8), dtype=float), "host matrix"),
    (np.arange(8.0) % 4, "integer \\[E=8\\] array"),
])
def test_bad_placement(placement, match):
    with pytest.raises(TopologyError, match=match):
        Topology(model=ModelShape(**MODEL), **CLUSTER, placement=placement)


def test_with_rejects_unknown_fields():
    t = Topology(model=ModelShape(**MODEL), **CLUSTER)
    with pytest.raises(TopologyError, match="Topology has no field\\(s\\) \\['bogus'\\]; fields: .*'slots'"):
        t.with_(bogus=1)
    with pytest.raises(TopologyError, match="slots must be an integer"):
        t.with_(slots="2")
    assert t.with_(slots=0).slots == 0


@pytest.mark.parametrize("mangle, match", [
    (lambda d: 5, "a topology dict must be a dict, got int"),
    (lambda d: {**d, "extra": 1}, "unknown keys \\['extra'\\]"),
    (lambda d: {k: v for k, v in d.items() if k != "hbm_bw"}, "lacks keys \\['hbm_bw'\\]"),
    (lambda d: {**d, "model": [1]}, "model must be a dict, got list"),
    (lambda d: {**d, "model": {**d["model"], "top_k": "2"}}, "top_k must be an integer"),
    (lambda d: {**d, "native": [[1, 0], [1]]}, "native must be a 0/1"),
])
def test_from_dict_rejects_malformed_dicts(mangle, match):
    d = Topology(model=ModelShape(**MODEL), **CLUSTER).to_dict()
    with pytest.raises(TopologyError, match=match):
        Topology.from_dict(mangle(d))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(MODEL) + ["moe_layers", "weight_bytes", "act_bytes", "ffn_matrices", "shared_experts"]),
       GARBAGE)
def test_garbage_model_fields_raise_topology_error_or_are_valid(field, value):
    try:
        m = ModelShape(**{**MODEL, field: value})
    except TopologyError as exc:
        assert str(exc).startswith(field) or "top_k" in str(exc)
        return
    for f in ("num_experts", "top_k", "hidden", "expert_ffn", "moe_layers", "ffn_matrices", "shared_experts"):
        assert type(getattr(m, f)) is int
    assert isinstance(m.name, str) and math.isfinite(m.weight_bytes) and m.weight_bytes > 0


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(CLUSTER) + ["name", "placement"]), GARBAGE)
def test_garbage_cluster_fields_raise_topology_error_or_are_valid(field, value):
    try:
        t = Topology(model=ModelShape(**MODEL), **{**CLUSTER, field: value})
    except TopologyError:
        return
    assert type(t.num_ranks) is int and t.native.shape == (t.num_ranks, 8)


# --- cards -------------------------------------------------------------------------------------

CLUSTER_CARD = ('name = "c"\nnum_ranks = 8\nranks_per_node = 8\nintra_node_GBps = 450\ninter_node_GBps = 50\n'
                'peak_tflops = 989.5\nhbm_TBps = 3.35\n')
MODEL_CARD = 'name = "tiny"\nnum_experts = 8\ntop_k = 1\nhidden = 8\nexpert_ffn = 8\n'


def test_card_that_is_not_utf8(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_bytes(b'name = "\xff\xfe"\nnum_experts = 8\n')
    with pytest.raises(CardError, match="is not UTF-8 text"):
        load_model_card(bad)
    with pytest.raises(CardError, match="is not UTF-8 text"):
        Topology.from_cards(model="mixtral-8x7b", cluster=bad)


@pytest.mark.parametrize("line, match", [
    ('num_experts = "eight"', "num_experts must be an integer"),
    ("num_experts = 8.5", "num_experts must be an integer"),
    ("num_experts = nan", "num_experts must be an integer"),
    ("top_k = [1]", "top_k must be an integer"),
    ("hidden = true", "hidden must be an integer"),
    ('weight_bytes = "2"', "weight_bytes must be a positive finite number"),
    ("weight_bytes = inf", "weight_bytes must be a positive finite number"),
    ("act_bytes = {a = 1}", "act_bytes must be a positive finite number"),
    ("name = 5", "name must be a string"),
    ("num_experts = 100000000000000000000000000000000000000000", "num_experts must be an integer"),
    ("bogus = 1", "unknown keys \\['bogus'\\]"),
])
def test_model_card_values_of_the_wrong_type(tmp_path, line, match):
    key = line.split(" = ")[0]
    text = "\n".join(ln for ln in MODEL_CARD.splitlines() if not ln.startswith(key + " ")) + "\n" + line + "\n"
    (tmp_path / "m.toml").write_text(text)
    with pytest.raises(CardError, match=f"model card .*m.toml.*{match}"):
        load_model_card(tmp_path / "m.toml")


def test_model_card_missing_keys(tmp_path):
    (tmp_path / "m.toml").write_text('name = "x"\nnum_experts = 8\n')
    with pytest.raises(CardError, match="incomplete: missing keys \\['expert_ffn', 'hidden', 'top_k'\\]"):
        load_model_card(tmp_path / "m.toml")


@pytest.mark.parametrize("line, error, match", [
    ('num_ranks = "8"', CardError, "num_ranks must be an integer, got '8'"),
    ("ranks_per_node = 8.5", CardError, "ranks_per_node must be an integer"),
    ("slots = true", CardError, "slots must be an integer, got True"),
    ("name = 1", CardError, "name must be a string"),
    ("intra_node_GBps = inf", CardError, "intra_node_GBps must be a finite number > 0, got inf"),
    ("inter_node_GBps = nan", CardError, "inter_node_GBps must be a finite number > 0"),
    ("peak_tflops = -1", CardError, "peak_tflops must be a finite number > 0"),
    ("hbm_TBps = 0", CardError, "hbm_TBps must be a finite number > 0"),
    ("hbm_TBps = 1" + "0" * 400, CardError, "hbm_TBps must be a finite number > 0"),
    ("hbm_TBps = [1]", CardError, "hbm_TBps must be a number"),
    ("num_ranks = 0", TopologyError, "num_ranks must be an integer in"),
    ("slots = -1", TopologyError, "slots must be an integer in"),
])
def test_cluster_card_values_of_the_wrong_type(tmp_path, line, error, match):
    key = line.split(" = ")[0]
    text = "\n".join(ln for ln in CLUSTER_CARD.splitlines() if not ln.startswith(key + " ")) + "\n" + line + "\n"
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(error, match=match):
        Topology.from_cards(model="mixtral-8x7b", cluster=tmp_path / "c.toml")


@pytest.mark.parametrize("ref, match", [
    (None, "built-in name or a .toml path, got NoneType"),
    (8, "got int"),
    (b"h100x8", "got bytes"),
])
def test_card_reference_of_the_wrong_type(ref, match):
    with pytest.raises(CardError, match=match):
        load_cluster_card(ref)
    with pytest.raises(CardError, match=match):
        Topology.from_cards(model=ref, cluster="h100x8")


def test_card_paths_that_are_not_files(tmp_path):
    (tmp_path / "d.toml").mkdir()
    with pytest.raises(CardError, match="does not exist \\(it is a directory\\)"):
        load_model_card(tmp_path / "d.toml")
    (tmp_path / "deep.toml").write_text("a = " + "[" * 50000 + "]" * 50000)
    with pytest.raises(CardError, match="not valid TOML"):
        load_model_card(tmp_path / "deep.toml")


def test_from_cards_rejects_unknown_overrides():
    with pytest.raises(CardError, match="unknown Topology.from_cards override\\(s\\) \\['bogus'\\]; allowed: .*'slots'"):
        Topology.from_cards(model="mixtral-8x7b", cluster="h100x8", bogus=1)
    with pytest.raises(TopologyError, match="slots must be an integer"):
        Topology.from_cards(model="mixtral-8x7b", cluster="h100x8", slots="two")
    assert Topology.from_cards(model="mixtral-8x7b", cluster="h100x8", slots=1, name="n").name == "n"


def test_every_error_here_is_a_value_error():
    for cls in (LoadsError, BudgetError, TopologyError, CardError):
        assert issubclass(cls, PlannerError) and issubclass(cls, ValueError)


def test_read_only_loads_reuse_the_compiled_kernels():
    """A frozen or memory-mapped loads array is copied at the front door: numba would otherwise
    compile every kernel again for the read-only array type (minutes), for the same plan."""
    from probe_planner.solvers import greedy_kernel

    topo = make_topology(1, 4, 2, slots=2)
    loads = np.random.default_rng(3).poisson(9, size=(4, 8)).astype(float)
    frozen = loads.copy()
    frozen.setflags(write=False)
    a, b = solve(loads, topo, Budget(window_us=np.inf)), solve(frozen, topo, Budget(window_us=np.inf))
    assert np.array_equal(a.route_tok, b.route_tok) and np.array_equal(a.replicas, b.replicas)
    sigs = greedy_kernel.plan_layers.signatures  # the loads are its first argument
    assert sigs and all(sig[0].mutable for sig in sigs)
