"""The Ray side of a search: a private local Ray bound to loopback (or the cluster at `--address`), the checks a
cluster of several nodes must pass (shared storage, input files on every node), and what each trial takes of it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from automl.search.packing import wants_auto
from automl.search.tracking import is_server
from automl.search.trial import warm_workers_enabled
from automl.skills.shared import UserError

STORAGE_KEY = "automl.storage_path"


def init_ray(address: Optional[str], system_config: Optional[dict[str, Any]] = None) -> None:
    """Join the cluster at `address`, or start a private local Ray on loopback (once per process) with
    `system_config` (Ray's `_system_config`: e.g. the worker preload of automl.search.warmup)."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING",
                              "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # a private local Ray, bound to loopback; token authentication stays on (Ray's default), its notice about
        # that on every run is not repeated
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        with local_ray_on_loopback():  # address=local: never a cluster someone else started on this machine
            ray.init(address="local", num_cpus=os.cpu_count() or 1, _system_config=system_config or {}, **kwargs)


@contextlib.contextmanager
def local_ray_on_loopback() -> Iterator[None]:
    """Make the private local Ray listen on 127.0.0.1 only (GCS, raylet, object manager, workers, runtime-env agent).

    Ray 2.60 replaces a loopback `_node_ip_address` by the machine's routable IP and its gRPC servers listen on every
    interface; its single-machine mode (the default on macOS and Windows, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) uses
    the loopback address as the node IP, and every server then binds to it. The variable is read when Ray is
    imported, so it is set for the processes Ray starts (GCS, raylet; the workers inherit the raylet's environment) and
    the already imported constant is set too, both only while Ray starts: a later `ray start` or `--address` run in
    this process is not affected."""
    import ray._private.ray_constants as ray_constants

    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_multinode_storage(storage: Path, tracking_uri: str, inputs: Mapping[str, str] | None = None) -> None:
    """On a cluster of several nodes, every node must see the storage path and the trials' input files (`inputs`:
    what each path is -> path, e.g. the spec key of a data file) at the same paths, and reach the tracking store."""
    import ray

    nodes = _alive_nodes()
    if len(nodes) <= 1:
        return
    if not is_server(tracking_uri):  # sqlite:, a path: a file only this node writes
        host = ray.util.get_node_ip_address()  # the address the other nodes reach this one at, not every interface
        raise UserError(
            f"the Ray cluster has {len(nodes)} nodes, but the MLflow store {tracking_uri} is a local file that "
            f"workers on other nodes cannot write; run a tracking server on this node's cluster address (mlflow "
            f"server --backend-store-uri sqlite:///mlflow.db --host {host} --port 5000) and pass "
            f"--tracking-uri http://{host}:5000")
    marker = storage / f".shared-check-{uuid.uuid4().hex[:8]}"
    marker.write_text("ok")
    paths = {STORAGE_KEY: str(marker), **(inputs or {})}
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_cpus=0)
        def missing(wanted: dict[str, str]) -> tuple[str, list[str]]:
            return socket.gethostname(), [key for key, path in wanted.items() if not os.path.exists(path)]

        checks = [missing.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                  .remote(paths) for n in nodes]
        blind: dict[str, set[str]] = {}
        for host, keys in ray.get(checks, timeout=120):
            for key in keys:
                blind.setdefault(key, set()).add(host)
    finally:
        marker.unlink(missing_ok=True)
    if STORAGE_KEY in blind:
        raise UserError(f"automl.storage_path {storage} is not shared: node(s) {', '.join(sorted(blind[STORAGE_KEY]))} "
                        f"cannot see it; put results on storage every node mounts at the same path (NFS) or use "
                        f"automl.storage_path=s3://bucket/path")
    if blind:
        lines = [f"  - {key}: {paths[key]} (missing on {', '.join(sorted(hosts))})" for key, hosts in blind.items()]
        raise UserError(f"the trials' input files must exist at the same paths on every node of the cluster; "
                        f"{len(blind)} do not:\n" + "\n".join(lines) + "\nput them on storage every node mounts "
                        "at the same path (NFS), or copy them to each node")


@dataclass
class TrialResources:
    per_trial: dict[str, float]  # what one trial uses: {"cpu", "gpu"} (summary, GPU-hours)
    tune: dict[str, float]  # what Tune reserves for the trial itself (the trial, or the waiting DDP driver)
    concurrent: int  # trials at once
    ddp_workers: int = 0  # > 1: DDP processes (ranks) per trial


def plan_resources(opts: Any) -> TrialResources:
    """What a trial needs, how many run at once, and how many DDP workers a trial has (`opts`: SearchOptions).

    A trial of G > 1 GPUs takes G GPUs of one node and runs DDP over them, one process per GPU."""
    import ray

    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0))
    cpus = float(total.get("CPU", 1))
    gpt = (1.0 if gpus else 0.0) if wants_auto(opts.gpus_per_trial) else float(opts.gpus_per_trial)
    from automl.testing import testing_ddp_cpu_workers

    cpu_workers = testing_ddp_cpu_workers() if gpt == 0 else 0
    if gpt > 1 and gpt != int(gpt):
        raise UserError(f"--gpus-per-trial {gpt:g}: a trial of more than one GPU runs one DDP worker per GPU, so "
                        f"it takes a whole number of GPUs (2, 4, 8) or a fraction of one GPU (0.5, 0.25)")
    if gpt > 0 and gpus == 0:
        raise UserError(f"--gpus-per-trial {gpt:g}: the Ray cluster has no GPU; use --gpus-per-trial 0 on CPUs")
    if gpt > gpus > 0:
        raise UserError(f"--gpus-per-trial {gpt:g}: the Ray cluster has only {gpus:g} GPUs")
    cpt = min(opts.cpus_per_trial, cpus)
    workers = int(gpt) if gpt > 1 else cpu_workers
    fits = int(gpus // gpt) if gpt > 0 else int(cpus // cpt)
    concurrent = opts.max_concurrent or max(fits, 1)
    return TrialResources(per_trial={"cpu": cpt, "gpu": gpt}, tune={"cpu": cpt, "gpu": gpt},
                          concurrent=max(1, min(concurrent, opts.num_trials)), ddp_workers=workers if workers > 1 else 0)


def reuse_workers(res: TrialResources) -> bool:
    """Warm trial workers: a trial's Ray actor runs the next trial (imports, CUDA context and compiled regions kept),
    unless AUTOML_WARM_WORKERS=0 or trials are DDP runs (their ranks are child processes of one trial)."""
    return warm_workers_enabled() and res.ddp_workers <= 1
