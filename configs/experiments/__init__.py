"""Configs of the experiments in experiments/: get_config("small" | "paper")."""
