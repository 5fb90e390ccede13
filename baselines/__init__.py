"""The baselines DA2 is compared with on the same task and cluster: RL-AutoAugment, Optuna/TPE (with ASHA) and PBA."""
