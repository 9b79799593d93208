"""Hyperparameter search: Ray Tune schedules trials, Optuna samples, MLflow records, the winner is handed over."""
