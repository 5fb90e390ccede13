"""The baselines DA2 is compared with on the same task and cluster: RL-AutoAugment and Optuna/TPE (with ASHA)."""
