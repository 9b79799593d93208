"""Depth Anything V2 finetuning: spec, data, model, Lightning training, evaluation, inference, export.

This package knows nothing of Ray, Optuna or search spaces; `automl` drives it through the functions exported here.
"""

__version__ = "0.1.0"
