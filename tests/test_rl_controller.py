"""The RL-AutoAugment controller and its PPO update (pure torch), and the Searcher's state round trip (no Ray run)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines.rl_autoaugment import PolicyController, PPOTrainer, RLAutoAugmentSearcher
from search_spaces.discrete import DiscreteSpace
from search_spaces.policy import Policy

SPACE = DiscreteSpace()  # 5 sub-policies x 2 ops: 30 decisions


@pytest.fixture(autouse=True)
def one_thread():
    """The controller is tiny; extra threads only contend with the other engineers' jobs on this machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _target_sequence() -> list[int]:
    """A fixed policy the test rewards, drawn from a differently seeded controller."""
    decisions, _ = PolicyController(SPACE, seed=123).sample(torch.Generator().manual_seed(7))
    return decisions


def test_controller_shape_is_autoaugments() -> None:
    controller = PolicyController(SPACE)
    assert controller.lstm.num_layers == 1 and controller.lstm.hidden_size == 100
    assert [head.out_features for head in controller.heads] == [len(SPACE.op_names), 11, 10]
    decisions, _ = controller.sample(torch.Generator().manual_seed(0))
    assert len(decisions) == SPACE.num_decisions() == 30
    assert SPACE.to_config(decisions) == dict(zip(SPACE.param_names(), decisions))  # in range, whole numbers


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_sample_log_prob_matches_teacher_forced_log_prob(seed: int) -> None:
    controller = PolicyController(SPACE, seed=seed % 7)
    decisions, sampled_log_prob = controller.sample(torch.Generator().manual_seed(seed))
    assert float(controller.log_prob(decisions).detach()) == pytest.approx(sampled_log_prob, abs=1e-4)
    assert sampled_log_prob < 0.0


def test_sampling_is_reproducible_from_the_generator() -> None:
    first = [PolicyController(SPACE, seed=3).sample(torch.Generator().manual_seed(11))[0] for _ in range(2)]
    other = PolicyController(SPACE, seed=3).sample(torch.Generator().manual_seed(12))[0]
    assert first[0] == first[1]
    assert other != first[0]


def test_log_prob_rejects_out_of_range_decisions() -> None:
    controller = PolicyController(SPACE)
    bad = [0] * SPACE.num_decisions()
    bad[1] = 11  # probability bins are 0..10
    with pytest.raises(ValueError, match="prob decisions must lie in"):
        controller.log_prob(bad)
    with pytest.raises(ValueError, match="shape"):
        controller.log_prob([0, 0, 0])


def _train_towards(target: list[int], updates: int, seed: int = 0) -> tuple[PolicyController, list[dict], float]:
    """PPO batches of 3 sampled children (reward 1 only if equal to target) plus the target itself (reward 1)."""
    controller = PolicyController(SPACE, seed=seed)
    trainer = PPOTrainer(controller)  # AutoAugment's lr 3.5e-4, clip 0.2, entropy 1e-5, baseline decay 0.95
    generator = torch.Generator().manual_seed(seed + 1)
    stats = []
    first_loser = None
    for _ in range(updates):
        batch = []
        for _ in range(3):
            decisions, log_prob = controller.sample(generator)
            first_loser = first_loser or decisions
            batch.append((decisions, log_prob, 1.0 if decisions == target else 0.0))
        batch.append((target, float(controller.log_prob(target).detach()), 1.0))
        stats.append(trainer.update(batch))
    return controller, stats, first_loser


def test_ppo_raises_the_probability_of_the_rewarded_sequence() -> None:
    target = _target_sequence()
    before_controller = PolicyController(SPACE, seed=0)
    before = float(before_controller.log_prob(target).detach())
    controller, stats, loser = _train_towards(target, updates=10)
    after = float(controller.log_prob(target).detach())
    # measured: -75.79 -> -71.62 (+4.17 nats) with the default lr 3.5e-4; each update is capped by the clip
    assert after - before > 3.0
    # a sequence that earned 0 (below the baseline) lost probability
    assert float(controller.log_prob(loser).detach()) < float(before_controller.log_prob(loser).detach())
    assert all(0.0 <= s["clip_fraction"] <= 1.0 and math.isfinite(s["loss"]) for s in stats)
    assert [s["num_updates"] for s in stats] == list(range(1, 11))


def test_ppo_update_is_deterministic() -> None:
    target = _target_sequence()
    first_controller, first_stats, _ = _train_towards(target, updates=2, seed=5)
    second_controller, second_stats, _ = _train_towards(target, updates=2, seed=5)
    assert first_stats == second_stats
    for a, b in zip(first_controller.parameters(), second_controller.parameters()):
        assert torch.equal(a, b)


def test_moving_average_baseline() -> None:
    trainer = PPOTrainer(PolicyController(SPACE), baseline_decay=0.95)
    sequence = _target_sequence()
    log_prob = float(trainer.controller.log_prob(sequence).detach())
    first = trainer.update([(sequence, log_prob, 0.2), (sequence, log_prob, 0.4)])
    assert first["baseline_before"] == pytest.approx(0.3)  # the first batch seeds the baseline with its mean
    assert first["advantage_mean"] == pytest.approx(0.0, abs=1e-7)
    expected = 0.95 * (0.95 * 0.3 + 0.05 * 0.2) + 0.05 * 0.4
    assert trainer.baseline == pytest.approx(expected)
    second = trainer.update([(sequence, log_prob, 1.0)])
    assert second["baseline_before"] == pytest.approx(expected)
    assert second["advantage_mean"] == pytest.approx(1.0 - expected)
    assert trainer.state_dict()["baseline"] == pytest.approx(0.95 * expected + 0.05)


def _complete(searcher: RLAutoAugmentSearcher, trial_ids: list[str], target_op: int = 4) -> None:
    """Cheap rewards: the fraction of ops whose type is `target_op`."""
    for trial_id in trial_ids:
        config = searcher.suggest(trial_id)
        types = [config[name] for name in SPACE.param_names() if name.endswith("_type")]
        searcher.on_trial_complete(trial_id, {"val_ap": types.count(target_op) / len(types)})


def test_searcher_save_restore_round_trip(tmp_path) -> None:
    searcher = RLAutoAugmentSearcher(SPACE, batch_size=2, seed=1)
    _complete(searcher, ["t0", "t1", "t2"])  # one PPO update, one child waiting in the next batch
    open_config = searcher.suggest("t3")  # pending when saved
    path = tmp_path / "searcher-state.pt"
    searcher.save(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["searcher-state.pt"]  # the temp file was renamed away

    restored = RLAutoAugmentSearcher(SPACE, batch_size=2, seed=99)
    restored.restore(str(path))
    assert restored.history == searcher.history and len(restored.history) == 3
    assert restored.updates == searcher.updates and len(restored.updates) == 1
    assert restored.trainer.baseline == searcher.trainer.baseline
    assert restored.seed == 1
    # identical next suggestions, and identical PPO once the pending child and one more complete
    assert restored.suggest("t4") == searcher.suggest("t4")
    for each in (searcher, restored):
        each.on_trial_complete("t3", {"val_ap": 0.5})
        each.on_trial_complete("t4", {"val_ap": 0.25})
    assert restored.updates == searcher.updates and len(restored.updates) == 2
    assert restored.suggest("t5") == searcher.suggest("t5")
    assert Policy.from_json(open_config["policy_json"]) == SPACE.to_policy(SPACE.from_config(open_config))


def test_searcher_skips_errors_and_missing_metrics() -> None:
    searcher = RLAutoAugmentSearcher(SPACE, batch_size=2, seed=0)
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", None, error=True)
    searcher.on_trial_complete("b", {"loss": 1.0})
    searcher.on_trial_complete("c", {"val_ap": float("nan")})
    searcher.on_trial_complete("never-suggested", {"val_ap": 1.0})
    assert searcher.history == [] and searcher.updates == []
    with pytest.raises(ValueError, match="no child"):
        searcher.best_policy()


def test_searcher_min_mode_and_best_policy() -> None:
    searcher = RLAutoAugmentSearcher(SPACE, metric="loss", mode="min", batch_size=8, seed=0)
    configs = {trial_id: searcher.suggest(trial_id) for trial_id in ("a", "b", "c")}
    for trial_id, loss in (("a", 0.5), ("b", 0.1), ("c", 0.9)):
        searcher.on_trial_complete(trial_id, {"loss": loss})
    assert searcher.best_policy() == Policy.from_json(configs["b"]["policy_json"])


def test_restore_rejects_foreign_and_mismatched_state(tmp_path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": 99}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt: field 'format'"):
        RLAutoAugmentSearcher(SPACE).restore(str(foreign))
    saved = tmp_path / "small.pt"
    RLAutoAugmentSearcher(DiscreteSpace(num_sub_policies=2)).save(str(saved))
    with pytest.raises(ValueError, match=r"small\.pt: field 'space'"):
        RLAutoAugmentSearcher(SPACE).restore(str(saved))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pt: not a RLAutoAugmentSearcher state"):
        RLAutoAugmentSearcher(SPACE).restore(str(garbage))


def test_searcher_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="learning_rate"):
        RLAutoAugmentSearcher(SPACE, learning_rate=0.1)


def test_controller_and_ppo_defaults_are_autoaugments() -> None:
    """AutoAugment: lr 0.00035, entropy weight 0.00001, reward baseline EMA 0.95, weights uniform in [-0.1, 0.1]
    (what the README states; clip and epochs are not in the paper)."""
    searcher = RLAutoAugmentSearcher(SPACE, seed=0)
    trainer = searcher.trainer
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.00035)
    assert trainer.entropy_weight == pytest.approx(0.00001) and trainer.baseline_decay == pytest.approx(0.95)
    assert (trainer.clip, trainer.epochs) == (0.2, 4)
    weights = torch.cat([p.detach().flatten() for p in searcher.controller.parameters()])
    assert weights.abs().max() <= 0.1 and weights.abs().max() > 0.09
