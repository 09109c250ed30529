"""Every bad offload input raises OffloadError (a PlannerError, a ValueError) naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from probe_planner import ModelShape
from probe_planner.errors import CardError, OffloadError, PlannerError
from probe_planner.offload.exact import plan_exact
from probe_planner.offload.greedy import plan_greedy
from probe_planner.offload.group import choose_group
from probe_planner.offload.problem import OffloadProblem, forecast
from probe_planner.offload.schedule import OffloadSchedule
from probe_planner.offload.timeline import run_timeline

MODEL = ModelShape(name="t", num_experts=4, top_k=2, hidden=1, expert_ffn=1)
GOOD = dict(model=MODEL, alpha_us=1.0, beta_us=0.5, host_bw=6e5, cache_slots=6, batch_tokens=2, num_layers=3)


def problem(**changes) -> OffloadProblem:
    return OffloadProblem(**{**GOOD, **changes})


def test_offload_error_is_a_planner_error():
    assert issubclass(OffloadError, PlannerError) and issubclass(OffloadError, ValueError)


@pytest.mark.parametrize("changes, match", [
    ({"cache_slots": 3}, "cache_slots"),  # fewer slots than one layer's experts
    ({"cache_slots": 2.5}, "cache_slots"),
    ({"cache_slots": True}, "cache_slots"),
    ({"host_bw": -1.0}, "host_bw"),
    ({"host_bw": float("nan")}, "host_bw"),
    ({"alpha_us": 0.0}, "alpha_us"),
    ({"batch_tokens": 0}, "batch_tokens"),
    ({"num_layers": 0}, "num_layers"),
    ({"dense_us_per_token": -1.0}, "dense_us_per_token"),
    ({"seq_bytes": "big"}, "seq_bytes"),
    ({"gpu_bytes": 10.0}, "gpu_bytes"),  # 6 experts of 6 bytes do not fit 10 bytes
    ({"host_bytes": 10.0}, "host_bytes"),
    ({"model": "mixtral"}, "ModelShape"),
])
def test_bad_problem(changes, match):
    with pytest.raises(OffloadError, match=match):
        problem(**changes)


def test_unknown_field_and_card():
    with pytest.raises(OffloadError, match="no field"):
        problem().with_(slots=3)
    with pytest.raises(CardError):
        OffloadProblem.from_cards("no-such-model", "h100x8", cache_slots=8, batch_tokens=1)


@pytest.mark.parametrize("freq, match", [
    (np.full((2, 4), 0.5), "shape"),
    (np.full((3, 4), 1.5), r"\[0, 1\]"),
    (np.full((3, 4), np.nan), "finite"),
    (np.full((3, 4), -0.1), ">= 0"),
    (np.full((3, 4), "a"), "real numbers"),
    (np.ma.masked_array(np.full((3, 4), 0.5)), "masked"),
])
def test_bad_freq(freq, match):
    with pytest.raises(OffloadError, match=match):
        forecast(problem(), freq, 1)


def test_bad_group_and_options():
    p = problem()
    f = np.full((3, 4), 0.5)
    for g in (0, 1.5, p.max_group() + 1, True):
        with pytest.raises(OffloadError, match="group"):
            forecast(p, f, g)
    with pytest.raises(OffloadError, match="latency_cap_us"):
        choose_group(p, f, -1.0)
    with pytest.raises(OffloadError, match="planner"):
        choose_group(p, f, 1e9, planner="magic")
    with pytest.raises(OffloadError, match="spare_slots"):
        plan_greedy(p, forecast(p, f, 1), spare_slots=-1)
    with pytest.raises(OffloadError, match="time_limit_s"):
        plan_exact(p, forecast(p, f, 1), time_limit_s=0)
    with pytest.raises(OffloadError, match="GroupForecast"):
        plan_greedy(p, "forecast")


def test_bad_counts():
    p = problem()
    s = plan_greedy(p, forecast(p, np.full((3, 4), 0.5), 1)).schedule
    for counts, match in ((np.zeros((1, 2, 4)), "shape"), (np.full((1, 3, 4), 0.5), "whole"), (np.zeros((0, 3, 4)), "at least one"),
                          (np.full((1, 3, 4), -1.0), ">= 0")):
        with pytest.raises(OffloadError, match=match):
            run_timeline(p, s, counts)


def sched(**changes) -> OffloadSchedule:
    base = dict(num_layers=2, num_experts=3, cache_slots=3, group=1, prefetch=(np.array([0, 1]), np.array([2])),
                evict=(np.zeros((0, 2), np.int64), np.array([[0, 0]])), resident_start=np.zeros((0, 2), np.int64))
    return OffloadSchedule(**{**base, **changes})


def test_good_schedule_validates():
    s = sched().validate()
    assert s.planned_resident(1).tolist() == [[0, 1], [1, 2]]
    assert s.loads_per_pass == 3


@pytest.mark.parametrize("changes, match", [
    ({"cache_slots": 1}, "cache_slots"),  # 2 loads into 1 slot
    ({"prefetch": (np.array([0, 0]), np.array([2]))}, "twice"),
    ({"prefetch": (np.array([0, 3]), np.array([2]))}, "outside"),
    ({"prefetch": (np.array([0.5]), np.array([2]))}, "integers"),
    ({"prefetch": (np.array([0]),)}, "num_layers"),
    ({"prefetch": np.zeros((2, 1), np.int64)}, "sequence"),
    ({"evict": (np.zeros((0, 2), np.int64), np.array([[0, 5]]))}, "outside"),
    ({"evict": (np.zeros((0, 2), np.int64), np.array([0, 0, 0]))}, r"\[k, 2\]"),
    ({"resident_start": np.array([[0, 0]])}, "already cached"),
    ({"resident_start": np.array([[1, 0], [1, 0]])}, "twice"),
    ({"resident_start": np.array([[1, 0], [1, 1], [0, 2], [1, 2]])}, "resident_start holds"),
    ({"group": 0}, "group"),
    ({"num_layers": 2.0}, "num_layers"),
])
def test_bad_schedule(changes, match):
    with pytest.raises(OffloadError, match=match):
        sched(**changes).validate()


def test_evicting_what_is_not_cached_is_a_no_op():
    s = sched(evict=(np.array([[1, 1]]), np.array([[0, 0], [1, 0]]))).validate()
    assert s.planned_resident(1).tolist() == [[0, 1], [1, 2]]
