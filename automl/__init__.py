"""AutoML driver: CLI, skills, search (Ray Tune + Optuna), tracking (MLflow), reports."""

__version__ = "0.1.0"
