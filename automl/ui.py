"""`automl ui RESULTS_DIR`: the MLflow UI on a search's (or a plain run's) tracking store.

For a SQLite store (the default, RESULTS_DIR/mlflow.db) it starts `mlflow server` bound to 127.0.0.1 in the
background and prints at once (read from the database file, no MLflow import) the URLs of the search's parent run,
of its trials' objective over epochs and of the compare view of its trials; then `ready` when the server answers
(MLflow takes tens of seconds to start on a busy machine). It serves until Ctrl-C or SIGTERM, which stop the server
within a few seconds. For a tracking server (`--tracking-uri http://...` at search time) nothing is started: the
URLs on that server are printed.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from automl.search.tracking import is_server
from automl.skills.shared import UserError

DEFAULT_PORT = 5000
STARTUP_TIMEOUT_S = 120.0
GRACE_S = 3.0  # after SIGTERM, before SIGKILL


@dataclass
class Store:
    """Where a results folder's runs are tracked, and which run is its top one."""

    tracking_uri: str
    experiment_name: Optional[str] = None
    run_id: Optional[str] = None  # the search's parent run, or the plain run of `automl off`
    source: str = ""
    metric: str = "val/loss"  # the search's objective


# MLflow 3's UI starts in its GenAI view (traces, evaluations, an assistant pane) unless told otherwise; this query
# parameter of its routes opens the model-training view (read by the UI's workflow switch, MLflow 3.17)
TRAINING_VIEW = "workflowType=machine_learning"


@dataclass
class Links:
    base: str
    experiment_id: str
    run_id: Optional[str]
    child_run_ids: list[str] = field(default_factory=list)

    @property
    def experiment(self) -> str:
        return f"{self.base}/#/experiments/{self.experiment_id}/runs?{TRAINING_VIEW}"

    @property
    def run(self) -> Optional[str]:
        return (f"{self.base}/#/experiments/{self.experiment_id}/runs/{self.run_id}?{TRAINING_VIEW}"
                if self.run_id else None)

    @property
    def compare(self) -> Optional[str]:
        """MLflow's compare view of the trials (runs and experiments as JSON lists, URL-encoded)."""
        if not self.child_run_ids:
            return None
        runs = urllib.parse.quote(json.dumps(self.child_run_ids, separators=(",", ":")))
        exps = urllib.parse.quote(json.dumps([self.experiment_id], separators=(",", ":")))
        return f"{self.base}/#/compare-runs?runs={runs}&experiments={exps}&{TRAINING_VIEW}"

    def metric(self, key: str) -> Optional[str]:
        """One metric of all trials on one chart against the epoch (MLflow's metric view, x axis `step`: runs log
        per-epoch metrics with step=epoch)."""
        if not self.child_run_ids:
            return None
        def q(text: str) -> str:
            return urllib.parse.quote(text, safe="")
        runs = q(json.dumps(self.child_run_ids, separators=(",", ":")))
        return (f"{self.base}/#/metric?runs={runs}&metric={q(json.dumps(key))}"
                f"&experiments={q(json.dumps([self.experiment_id], separators=(',', ':')))}"
                f"&plot_metric_keys={q(json.dumps([key], separators=(',', ':')))}&x_axis=step&{TRAINING_VIEW}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def resolve_store(results_dir: str | Path) -> Store:
    """From summary.json (finished search), search_state.json (running or crashed search), fit.json (`automl off`)
    or a bare RESULTS_DIR/mlflow.db."""
    from automl.skills.shared import default_tracking_uri

    results = Path(results_dir)
    if not results.is_dir():
        raise UserError(f"results folder not found: {results}")
    summary = _read_json(results / "summary.json")
    ml = summary.get("mlflow") or {}
    if ml.get("tracking_uri"):
        return Store(ml["tracking_uri"], ml.get("experiment"), ml.get("parent_run_id"),
                     str(results / "summary.json"), (summary.get("objective") or {}).get("metric") or "val/loss")
    state = _read_json(results / "search_state.json")
    if state.get("tracking_uri"):
        options = state.get("options") or {}
        return Store(state["tracking_uri"], options.get("experiment_name"), state.get("parent_run_id"),
                     str(results / "search_state.json"), options.get("metric") or "val/loss")
    fit = _read_json(results / "fit.json")
    if fit.get("tracking_uri"):
        return Store(fit["tracking_uri"], None, fit.get("mlflow_run_id"), str(results / "fit.json"))
    if (results / "mlflow.db").is_file():
        return Store(default_tracking_uri(results), None, None, str(results / "mlflow.db"))
    raise UserError(f"no MLflow store found in {results}: expected summary.json or search_state.json (automl run), "
                    f"fit.json or mlflow.db (automl off)")


def find_links(store: Store, base: str) -> Links:
    """The experiment and run ids behind the UI's URLs, read from the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.tracking_uri)
    exp_id: Optional[str] = None
    if store.run_id:
        try:
            exp_id = client.get_run(store.run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a run that was deleted: fall back to the experiment by name
            store.run_id = None
    if exp_id is None and store.experiment_name:
        exp = client.get_experiment_by_name(store.experiment_name)
        exp_id = exp.experiment_id if exp is not None else None
    if exp_id is None:
        exps = [e for e in client.search_experiments() if e.name != "Default" or len(client.search_experiments()) == 1]
        if not exps:
            raise UserError(f"the MLflow store {store.tracking_uri} holds no experiment")
        exp_id = exps[0].experiment_id
    children: list[str] = []
    if store.run_id:
        runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{store.run_id}'",
                                  max_results=1000, order_by=["attributes.start_time ASC"])
        children = [r.info.run_id for r in runs]
    return Links(base=base, experiment_id=str(exp_id), run_id=store.run_id, child_run_ids=children)


def links_from_sqlite(db: Path, store: Store, base: str) -> Optional[Links]:
    """`find_links` read straight from a SQLite store's tables (milliseconds, where importing MLflow takes
    seconds); None when the file does not look like an MLflow store."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        exp_id = None
        if store.run_id:
            row = con.execute("SELECT experiment_id FROM runs WHERE run_uuid = ? AND lifecycle_stage = 'active'",
                              (store.run_id,)).fetchone()
            if row is None:
                store.run_id = None
            else:
                exp_id = row[0]
        if exp_id is None and store.experiment_name:
            row = con.execute("SELECT experiment_id FROM experiments WHERE name = ?",
                              (store.experiment_name,)).fetchone()
            exp_id = row[0] if row else None
        if exp_id is None:
            rows = con.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' "
                               "ORDER BY experiment_id").fetchall()
            named = [r for r in rows if r[1] != "Default"] or rows
            if not named:
                raise UserError(f"the MLflow store {store.tracking_uri} holds no experiment")
            exp_id = named[0][0]
        children: list[str] = []
        if store.run_id:
            children = [r[0] for r in con.execute(
                "SELECT runs.run_uuid FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                "WHERE tags.key = 'mlflow.parentRunId' AND tags.value = ? AND runs.lifecycle_stage = 'active' "
                "ORDER BY runs.start_time", (store.run_id,))]
        return Links(base=base, experiment_id=str(exp_id), run_id=store.run_id, child_run_ids=children)
    except sqlite3.Error:
        return None
    finally:
        con.close()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str, port: Optional[int]) -> int:
    """`port` when free (0: any free port); None: the first free of 5000..5019."""
    if port == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    if port is not None:
        if not _port_free(host, port):
            raise UserError(f"--port {port}: the port is in use on {host}; pass another --port (or --port 0 for any "
                            f"free port)")
        return port
    for p in range(DEFAULT_PORT, DEFAULT_PORT + 20):
        if _port_free(host, p):
            return p
    raise UserError(f"ports {DEFAULT_PORT}-{DEFAULT_PORT + 19} are all in use on {host}; pass --port P")


def server_command(store: Store, results: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.tracking_uri,
            "--artifacts-destination", str((results / "mlartifacts").resolve()),
            "--host", host, "--port", str(port), "--workers", "1"]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise UserError(f"mlflow server exited with status {proc.returncode} before answering at {url}")
        if _health(url):
            return
        time.sleep(0.5)
    raise UserError(f"mlflow server did not answer at {url}/health within {timeout:.0f} s")


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def print_links(links: Links, store: Store) -> None:
    if links.run:
        kind = "search (parent run)" if links.child_run_ids else "run"
        print(f"{kind}: {links.run}")
    print(f"experiment: {links.experiment}")
    if links.child_run_ids:
        print(f"{store.metric} of the {len(links.child_run_ids)} trials: {links.metric(store.metric)}")
    if links.compare:
        print(f"compare the {len(links.child_run_ids)} trials: {links.compare}")
    print(f"(store {store.tracking_uri}, found in {store.source})", flush=True)


def serve(results_dir: str | Path, *, host: str = "127.0.0.1", port: Optional[int] = None) -> int:
    """Start the UI for RESULTS_DIR and block until Ctrl-C (or SIGTERM); returns the exit status."""
    results = Path(results_dir).resolve()
    store = resolve_store(results)
    if is_server(store.tracking_uri):
        links = find_links(store, store.tracking_uri.rstrip("/"))
        print(f"the search logged to the tracking server {store.tracking_uri}; nothing to start:")
        print_links(links, store)
        return 0
    db: Optional[Path] = None
    if store.tracking_uri.startswith("sqlite:///"):
        db = Path(store.tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise UserError(f"the MLflow store {db} named in {store.source} does not exist")
    chosen = pick_port(host, port)
    base = f"http://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{chosen}"

    def stop(*_a: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)  # a service manager's stop: the server goes too
    proc: Optional[subprocess.Popen] = None
    started = time.time()
    try:
        # its own session: Ctrl-C in the terminal reaches automl ui alone, which then stops the server promptly
        # (uvicorn given SIGINT too would wait for the browser's open connections)
        proc = subprocess.Popen(server_command(store, results, host, chosen), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        log: collections.deque[str] = collections.deque(maxlen=40)
        threading.Thread(target=_drain, args=(proc.stderr, log), daemon=True).start()
        links = links_from_sqlite(db, store, base) if db is not None else None
        if links is None:
            links = find_links(store, base)
        print(f"MLflow UI for {results} starting at {base} (Ctrl-C stops it)")
        print_links(links, store)
        try:
            wait_until_up(base, proc)
        except UserError as exc:
            time.sleep(0.5)
            tail = "".join(log).strip()
            raise UserError(f"{exc}{'; its last output: ' + tail[-2000:] if tail else ''}") from None
        print(f"ready: {base} answers (started in {time.time() - started:.0f} s)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        print("stopping the MLflow UI", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc is not None:
            _stop(proc)


def _drain(stream: Any, log: "collections.deque[str]") -> None:
    """Read the server's log as it comes (a full pipe would stall it); keep the last lines for error messages."""
    for line in stream:
        log.append(line)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the uvicorn workers it started: SIGTERM to all of them (the `mlflow server` command does
    not pass it on), then SIGKILL to whatever still runs after GRACE_S (the UI holds no state worth waiting for)."""
    if proc.poll() is not None:
        return
    tree = [*_children(proc.pid), proc.pid]
    for pid in tree:
        _signal_server(pid, signal.SIGTERM)
    deadline = time.time() + GRACE_S
    while time.time() < deadline and any(_is_server(pid) for pid in tree):
        time.sleep(0.1)
    for pid in tree:
        _signal_server(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)


def _is_server(pid: int) -> bool:
    """Whether `pid` still runs a process of the MLflow server (checked before signalling a recorded pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and any(w in cmdline for w in (b"mlflow", b"uvicorn", b"gunicorn", b"multiprocessing"))


def _signal_server(pid: int, sig: int) -> None:
    if _is_server(pid):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _children(pid: int) -> list[int]:
    """Descendants of `pid` (Linux /proc), deepest last."""
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    parent_of: dict[int, int] = {}
    for e in entries:
        if not e.isdigit():
            continue
        try:
            stat = Path(f"/proc/{e}/stat").read_text()
            parent_of[int(e)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent_of.items() if pp == p]
        out += kids
        frontier += kids
    return out
