"""MLflow for a search: one parent run, one nested child run per trial (created by the trainer inside the trial,
found again by its `trial_id` tag so that retries and resumes never duplicate it), and the trial's final state.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any, Mapping, Optional, Sequence

from automl.search.states import TrialState
from automl.skills.shared import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MlflowRun, TrackingConfig, first_line

log = logging.getLogger(__name__)

TRIAL_TAG = "automl.trial_id"
STATE_TAG = "automl.trial_state"
# the same value under a short name, for MLflow's runs table (`tags.trial_state = 'error'` in its search box)
SHORT_STATE_TAG = "trial_state"


def short_names(names: Sequence[str]) -> dict[str, str]:
    """A short alias for each dotted parameter name: its last part (`train.optim.lr` -> `lr`), or more of its
    tail where two names would share one; names without a dot get none."""
    out: dict[str, str] = {}
    for name in names:
        parts = name.split(".")
        for n in range(1, len(parts)):
            alias = ".".join(parts[-n:])
            if sum(1 for other in names if other.split(".")[-n:] == parts[-n:]) == 1:
                out[name] = alias
                break
    return out


def trial_params(config: Mapping[str, Any], metric: str, mode: str) -> dict[str, Any]:
    """The params of a trial's MLflow run that its spec does not show: the searched values under their dotted
    names and the objective (`objective.metric`, `objective.mode`), so that MLflow's compare view and parallel
    coordinates plot work on what was searched. (Short aliases go in the `searched` tag, not in params: MLflow's
    parallel coordinates plot would show each parameter twice.)"""
    return {**config, "objective.metric": metric, "objective.mode": mode}


def searched_tag(config: Mapping[str, Any]) -> dict[str, str]:
    """The `searched` tag: the trial's values under their short aliases (`lr=0.001, weight_decay=0.01`), one
    column of MLflow's runs table."""
    aliases = short_names(list(config))
    text = ", ".join(f"{aliases.get(k, k)}={v:.4g}" if isinstance(v, float) else f"{aliases.get(k, k)}={v}"
                     for k, v in config.items())
    return {"searched": text} if text else {}


# MLflow's HTTP client retries a failed request 7 times with exponential back-off: against a server that is down one
# call takes about 4 minutes. A search makes such calls at its start, in every trial (each epoch) and at its end, so
# it bounds them (2 retries after 1 s and 2 s, 15 s per attempt): training never waits long on tracking. The user's
# own MLFLOW_HTTP_REQUEST_* settings win.
FAST_FAIL_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def http_retry_settings(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The MLflow HTTP retry settings of a search: FAST_FAIL_HTTP under the user's own MLFLOW_HTTP_REQUEST_* values."""
    environ = os.environ if environ is None else environ
    return {k: environ.get(k) or v for k, v in FAST_FAIL_HTTP.items()}


def bound_http_retries() -> dict[str, str]:
    """Apply `http_retry_settings()` to this process (MLflow reads them at each request) and return them, for the
    trials (`TrialContext.tracking_env`, applied again in each worker)."""
    settings = http_retry_settings()
    os.environ.update(settings)
    return settings


def is_server(uri: str) -> bool:
    """Whether `uri` names a tracking server (http/https), as opposed to a store in a local file (sqlite:, a path)."""
    return str(uri).startswith(("http://", "https://"))


def check_tracking_reachable(uri: str) -> None:
    """Fail before any trial starts when the tracking store cannot be reached (the URI is in the message)."""
    from mlflow.tracking import MlflowClient

    from automl.skills.shared import UserError, check_not_file_store, quiet_mlflow_logs

    check_not_file_store(uri)
    quiet_mlflow_logs()
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here means the search cannot be tracked
        first = first_line(exc)[:300]
        raise UserError(f"MLflow tracking store {uri} is not reachable ({first}); start the server "
                        f"(mlflow server --host 127.0.0.1 --port 5000 ...) or pass another --tracking-uri") from None


def find_child_run(uri: str, experiment_name: str, parent_run_id: str, trial_id: str) -> Optional[str]:
    """The child run already made for `trial_id` under `parent_run_id` (a retried or resumed trial), if any."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1)
        return runs[0].info.run_id if runs else None
    except Exception:  # noqa: BLE001 - worst case a retried trial gets a second run
        return None


class ParentRun:
    """The search's parent run. Kept open across a driver crash: `--resume` reattaches by run id."""

    def __init__(self, uri: str, experiment_name: str, run_name: str, run_id: Optional[str] = None):
        self.run = MlflowRun(TrackingConfig(uri=uri, experiment_name=experiment_name, run_name=run_name,
                                            run_id=run_id, tags={"automl.role": "search"}), results_dir=".")
        self.uri = uri
        self.experiment_name = experiment_name

    @property
    def run_id(self) -> Optional[str]:
        return self.run.run_id

    def start(self) -> Optional[str]:
        """Create (or reattach) the parent run; an experiment made by an older version is tagged as model
        training (EXPERIMENT_KIND_TAG) so that MLflow's UI opens it in its training view."""
        run_id = self.run.start()
        if run_id:
            try:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=self.uri)
                exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
                if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                    client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            except Exception as exc:  # noqa: BLE001
                self.run.failures.append(f"experiment kind tag: {exc}")
        return run_id

    def log_spec(self, spec: Any) -> None:
        """The search's resolved spec as the parent run's artifact spec.yaml."""
        if not self.run_id:
            return
        try:
            from mlflow.tracking import MlflowClient
            from omegaconf import OmegaConf

            MlflowClient(tracking_uri=self.uri).log_text(self.run_id, OmegaConf.to_yaml(spec), "spec.yaml")
        except Exception as exc:  # noqa: BLE001
            self.run.failures.append(f"artifact spec.yaml: {exc}")

    def set_trial_outcome(self, trial_id: str, state: TrialState | str, reason: Optional[str] = None,
                          best: Optional[float] = None, winner: bool = False) -> None:
        """Tag the trial's child run with how it ended (STATE_TAG and SHORT_STATE_TAG: summary.json's state) and
        set its status to match (`TrialState.mlflow_status`)."""
        if not self.run_id:
            return
        run_id = find_child_run(self.uri, self.experiment_name, self.run_id, trial_id)
        if run_id is None:
            return
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            client.set_tag(run_id, STATE_TAG, state)
            client.set_tag(run_id, SHORT_STATE_TAG, state)
            if reason:
                key = {TrialState.ERROR: "automl.failure_reason", TrialState.ORPHANED: "automl.orphan_reason"}.get(
                    state, "automl.prune_reason")
                client.set_tag(run_id, key, reason)
            if best is not None:
                client.set_tag(run_id, "automl.best_objective", str(best))
            if winner:
                client.set_tag(run_id, "automl.winner", "true")
            final = TrialState(state).mlflow_status
            if client.get_run(run_id).info.status != final:
                with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints "View run ..." links here
                    client.set_terminated(run_id, status=final)
        except Exception as exc:  # noqa: BLE001
            self.run.failures.append(f"trial {trial_id}: {exc}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.run.log_metrics(metrics, step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.run.set_tags(tags)

    def log_artifact(self, path: str) -> None:
        if not self.run_id:
            return
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=self.uri).log_artifact(self.run_id, path)
        except Exception as exc:  # noqa: BLE001
            self.run.failures.append(f"artifact {path}: {exc}")

    def end(self, status: str = "FINISHED") -> None:
        self.run.end(status)
        if self.run.failures:
            log.warning(f"warning: {len(self.run.failures)} MLflow operations failed; first: {self.run.failures[0]}")
