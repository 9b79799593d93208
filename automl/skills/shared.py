"""The part of the skill contract every model family shares with the orchestration: the errors a user sees, records
that are never half-written (status.json lines, JSON files, the disk reserve), and the MLflow run helper.

The search, the CLI, the report and the UI take these names from here, never from a trainer package: `automl/`
reaches a trainer only through `automl/skills/` (tests/test_layering.py keeps it so). A second model family's trainer
raises the same `UserError` subclasses and writes its records with the same helpers.
"""

from __future__ import annotations

from trainer.errors import (CheckpointError, DataError, NonFiniteLossError, SpecError, SpecProblem, UserError,
                            first_line, out_of_memory_message)
from trainer.records import (DiskReserve, StatusFile, check_free_space, check_writable, os_error_message,
                             storage_error, storage_message, write_json_atomic)
from trainer.tracking import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, TRACKING_FAILURES_FILE, MlflowRun,
                              TrackingConfig, check_not_file_store, default_tracking_uri, quiet_mlflow_logs)

__all__ = [
    "CheckpointError", "DataError", "NonFiniteLossError", "SpecError", "SpecProblem", "UserError", "first_line",
    "out_of_memory_message",
    "DiskReserve", "StatusFile", "check_free_space", "check_writable", "os_error_message", "storage_error", "storage_message", "write_json_atomic",
    "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "TRACKING_FAILURES_FILE", "MlflowRun", "TrackingConfig",
    "check_not_file_store", "default_tracking_uri", "quiet_mlflow_logs",
]
