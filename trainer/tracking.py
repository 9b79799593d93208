"""MLflow tracking of one training run (a plain run, or a search trial nested under the search's parent run).

Uses an explicit `MlflowClient` (no global active run), so several runs can live in one process. Logging failures
never stop training: they are counted and reported at the end (a tracking server that goes away mid-run costs
the log, not the model). The deprecated `./mlruns` file store is never used: the default is a SQLite file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from trainer.errors import UserError, first_line

log = logging.getLogger(__name__)


@dataclass
class TrackingConfig:
    """Where and how a run is tracked. `uri=None` means `sqlite:///<results_dir>/mlflow.db`."""

    uri: Optional[str] = None
    experiment_name: str = "depth_net_mono"
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = None  # nests the run under a search's parent run
    run_id: Optional[str] = None  # continue this run (resume) instead of creating one
    tags: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    # logged as params first when the run is created (a search trial's searched values under their dotted names)
    params: dict[str, Any] = field(default_factory=dict)


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, evaluations); ours are model training
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# the spec keys every run logs as params (the whole resolved spec is the artifact spec.yaml): what tells runs apart
# at a glance in MLflow's runs table and compare view
CURATED_KEYS = ("model.encoder", "model.model_type", "dataset.train_dataset.batch_size", "train.num_epochs",
                "train.precision", "train.optim.lr")


def curated_params(spec: Any) -> dict[str, Any]:
    """The params a run logs from its spec: CURATED_KEYS that exist, and the names of its training and validation
    datasets (`dataset.train_dataset.names`: `NYUDV2 (train.txt)`, several joined by `, `)."""
    from omegaconf import OmegaConf

    out: dict[str, Any] = {}
    for key in CURATED_KEYS:
        value = OmegaConf.select(spec, key, default=None)
        if value is not None:
            out[key] = value
    for split in ("train_dataset", "val_dataset"):
        sources = OmegaConf.select(spec, f"dataset.{split}.data_sources", default=None) or []
        names = [f"{s.get('dataset_name') or '?'} ({Path(str(s.get('data_file') or '?')).name})" for s in sources]
        if names:
            out[f"dataset.{split}.names"] = ", ".join(names)
    return out


# in a run's results folder: one line per MLflow operation that failed (written by `MlflowRun` as it happens)
TRACKING_FAILURES_FILE = "tracking_failures.log"


def quiet_mlflow_logs() -> None:
    """MLflow logs each new SQLite store's schema set-up at INFO ("Creating initial MLflow database tables..."):
    routine, so only its warnings are shown."""
    import logging

    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_not_file_store(uri: Optional[str]) -> None:
    """Raise UserError when `uri` names MLflow's file store (`file:...`, or a folder path without a scheme), which
    MLflow 3 keeps in maintenance mode and refuses to open; the message names the SQLite URI to use instead."""
    from urllib.parse import urlparse

    if not uri or urlparse(uri).scheme not in ("", "file"):
        return
    folder = Path(urlparse(uri).path if uri.startswith("file:") else uri)
    raise UserError(f"MLflow tracking store {uri} is a folder (MLflow's file store), which MLflow 3 no longer opens; "
                    f"pass a SQLite file (--tracking-uri {default_tracking_uri(folder)}), a tracking server "
                    f"(--tracking-uri http://127.0.0.1:5000), or no --tracking-uri for RESULTS_DIR/mlflow.db")


def default_tracking_uri(results_dir: str | Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def artifact_location(uri: str) -> Optional[str]:
    """For a SQLite store, artifacts go beside the database (MLflow's default would be ./mlruns in the current
    directory); a tracking server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


class MlflowRun:
    """One MLflow run, fault tolerant. Call `start()`, then log, then `end()`.

    Every failed operation is kept in `failures` and, when `failure_log` is given, appended to that file as it
    happens (one line each), so that what could not be logged is known even when the run ends by a crash.
    """

    def __init__(self, cfg: TrackingConfig, results_dir: str | Path, failure_log: Optional[str | Path] = None):
        self.cfg = cfg
        self.uri = cfg.uri or default_tracking_uri(results_dir)
        self.run_id: Optional[str] = cfg.run_id
        self.failures: list[str] = []
        self.failure_log = Path(failure_log) if failure_log else None
        self.spec_file: Optional[Path] = None  # logged by `log_params` as the artifact spec.yaml
        self._client: Any = None
        self._logged: set[tuple[str, int]] = set()  # (metric, step) the run already holds: never logged twice

    # ------------------------------------------------------------------------------------------------------
    def start(self) -> Optional[str]:
        if not self.cfg.enabled:
            return None
        try:
            from mlflow.tracking import MlflowClient

            quiet_mlflow_logs()
            # MLflow logs a full traceback for every failed database call; each failure is counted and reported here
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            self._client = MlflowClient(tracking_uri=self.uri)
            if self.run_id:
                self._client.update_run(self.run_id, status="RUNNING")
                self._logged = self._steps_logged()
                return self.run_id
            exp = self._client.get_experiment_by_name(self.cfg.experiment_name)
            exp_id = exp.experiment_id if exp is not None else self._client.create_experiment(
                self.cfg.experiment_name, artifact_location=artifact_location(self.uri),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            tags = dict(self.cfg.tags)
            if self.cfg.parent_run_id:
                tags["mlflow.parentRunId"] = self.cfg.parent_run_id
            run = self._client.create_run(exp_id, run_name=self.cfg.run_name, tags=tags)
            self.run_id = run.info.run_id
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self._fail("start run", exc)
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a new run's inputs: `cfg.params` (a trial's searched values) first, then `params` minus the keys
        already given (MLflow refuses a second, different value), then `spec_file` as the artifact spec.yaml."""
        if not self._ready():
            return
        from mlflow.entities import Param

        merged = {**{k: v for k, v in params.items() if k not in self.cfg.params}, **self.cfg.params}
        items = [Param(str(k)[:250], _param_value(v)) for k, v in merged.items()]
        if self.spec_file is not None and Path(self.spec_file).is_file():
            try:
                self._client.log_artifact(self.run_id, str(self.spec_file))
            except Exception as exc:  # noqa: BLE001
                self._fail("log spec.yaml", exc)
        for i in range(0, len(items), 90):  # MLflow caps a batch at 100 params
            try:
                self._client.log_batch(self.run_id, params=items[i:i + 90])
            except Exception as exc:  # noqa: BLE001
                self._fail("log params", exc)
                return

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self._ready():
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v)) and (k, int(step)) not in self._logged]
        if not items:
            return
        try:
            self._client.log_batch(self.run_id, metrics=items)
            self._logged.update((m.key, m.step) for m in items)
        except Exception as exc:  # noqa: BLE001
            self._fail(f"log metrics at step {step}", exc, stop_on_full_disk=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self._ready():
            return
        from mlflow.entities import RunTag

        try:
            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        except Exception as exc:  # noqa: BLE001
            self._fail("set tags", exc)

    def end(self, status: str = "FINISHED") -> None:
        """status: FINISHED | FAILED | KILLED."""
        if not self._ready():
            return
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints "View run ..." links here
                self._client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            self._fail("end run", exc)

    def _steps_logged(self) -> set[tuple[str, int]]:
        """(metric, step) pairs a continued run already holds (a resumed or retried run may redo an epoch that was
        logged before its checkpoint was taken): those steps are not logged a second time."""
        try:
            keys = list(self._client.get_run(self.run_id).data.metrics)
            return {(k, int(m.step)) for k in keys for m in self._client.get_metric_history(self.run_id, k)}
        except Exception as exc:  # noqa: BLE001
            self._fail("read the steps already logged", exc)
            return set()

    # ------------------------------------------------------------------------------------------------------
    def start_in_background(self, params: Optional[Mapping[str, Any]] = None) -> None:
        """`start()` (and `log_params(params)` when given) in a thread, off the training's critical path: the
        first training step does not wait for MLflow. Every later call (and `wait_started`) waits for it first."""
        def run() -> None:
            self.start()
            if params is not None:
                self.log_params(params)

        self._starting = threading.Thread(target=run, name="mlflow-start", daemon=True)
        self._starting.start()

    def wait_started(self) -> None:
        """Wait for a `start_in_background` still running (nothing to wait for otherwise)."""
        starting = getattr(self, "_starting", None)
        if starting is not None and starting is not threading.current_thread():
            starting.join()

    def _ready(self) -> bool:
        self.wait_started()
        return self.cfg.enabled and self._client is not None and self.run_id is not None

    def _fail(self, what: str, exc: Exception, stop_on_full_disk: bool = False) -> None:
        """Count a failed operation (and append it to `failure_log`). With `stop_on_full_disk`, a full disk or an
        I/O error under a local store is raised as an OSError instead: the run's own records share that disk, and
        the run stops cleanly (FAILURE recorded) rather than training on without being able to save."""
        from trainer.records import storage_error

        disk = storage_error(exc)
        if stop_on_full_disk and disk is not None and self.uri.startswith("sqlite:"):
            raise OSError(disk.errno, disk.strerror, self.uri[len("sqlite:///"):]) from None
        msg = f"MLflow ({self.uri}): could not {what}: {type(exc).__name__}: {first_line(exc)[:200]}"
        if not self.failures:
            log.warning(f"warning: {msg}; training continues, later tracking errors are counted")
        self.failures.append(msg)
        if self.failure_log is not None:
            try:
                with self.failure_log.open("a") as fh:
                    fh.write(msg.replace("\n", " ") + "\n")
            except OSError:
                pass


def _param_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."
