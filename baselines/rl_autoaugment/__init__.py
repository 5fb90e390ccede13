"""AutoAugment's RL search: an LSTM controller trained with PPO, served to Ray Tune as a Searcher."""

from baselines.rl_autoaugment.controller import PolicyController, PPOTrainer
from baselines.rl_autoaugment.searcher import RLAutoAugmentSearcher

__all__ = ["PPOTrainer", "PolicyController", "RLAutoAugmentSearcher"]
