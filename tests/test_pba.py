"""baselines/pba: the PBT scheduler over the discrete space, its seeded starting population, the schedule export."""

from __future__ import annotations

import json

import pytest
from ray.tune.schedulers import PopulationBasedTraining

from baselines.pba import best_schedule, make_pba, pba_mutations
from search_spaces.discrete import DiscreteSpace


def test_mutations_cover_every_decision_of_the_space():
    space = DiscreteSpace(num_sub_policies=3, ops_per_sub_policy=2)
    mutations = pba_mutations(space)
    assert list(mutations) == space.param_names()
    sizes = space.decisions_per_op()
    for index, choices in enumerate(mutations.values()):
        assert choices == list(range(sizes[index % 3]))


def draw(start: dict) -> dict:
    return {name: sampler.func(None) for name, sampler in start.items()}


def test_the_starting_population_is_seeded_and_decodes_to_policies():
    space = DiscreteSpace(num_sub_policies=3, ops_per_sub_policy=2)
    pbt, start = make_pba(space, seed=5)
    assert isinstance(pbt, PopulationBasedTraining)
    first = [draw(start) for _ in range(4)]
    _, again = make_pba(space, seed=5)
    assert [draw(again) for _ in range(4)] == first
    _, other = make_pba(space, seed=6)
    assert [draw(other) for _ in range(4)] != first
    assert len({json.dumps(c, sort_keys=True) for c in first}) > 1  # a population, not four copies
    for config in first:
        policy = space.to_policy(space.from_config(config))
        assert len(policy.sub_policies) == 3


def test_best_schedule_is_the_best_childs_and_refuses_garbage():
    schedule = [{"step": 0, "policy": {"sub_policies": []}}]
    results = [{"metrics": {"val_ap": 0.2, "schedule_json": json.dumps(schedule)}},
               {"metrics": {"val_ap": 0.1, "schedule_json": "[]"}},
               {"metrics": {"val_ap": 0.9}}]  # no schedule (failed before its first report)
    assert json.loads(best_schedule(results)) == schedule
    assert best_schedule([{"metrics": {}}]) is None
    with pytest.raises(json.JSONDecodeError):
        best_schedule([{"metrics": {"val_ap": 0.5, "schedule_json": "{not json"}}])
