"""Long-lived expert placement for serving engines (what EPLB does, under our cost model).

:func:`place` chooses, from a window of per-batch loads and the placement in service, how many slots
each expert gets and on which ranks, minimizing the expected per-batch makespan within a budget on
weight moves; :class:`Placement` holds the answer, converts to the engines' maps
(:mod:`probe_planner.engine_maps`) and gives the topology per-batch planning runs on. Modules: the
front door (:mod:`.planner`), the result (:mod:`.placement`), the expected-makespan scorer
(:mod:`.scorer`), the local search (:mod:`.search`) and the exact form for small layers (:mod:`.exact`).
"""

from .placement import Placement, hosts_to_phy2log
from .planner import check_window, fit_slots, place, score_placement

__all__ = ["place", "Placement", "score_placement", "check_window", "fit_slots", "hosts_to_phy2log"]
