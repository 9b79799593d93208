"""`automl <action> [--skill depth_net_mono] [-e SPEC.yaml] [dotted.key=value ...]`

Every action reads one YAML spec (TAO depth_net keys work) plus dotted overrides. Errors in what the user gave
(spec, data, checkpoint, arguments) are printed without a traceback and exit with status 2, and so is running out
of (GPU) memory, with the settings that fix it; a training run whose loss went NaN/inf exits with status 3.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from automl.skills import DEFAULT_SKILL

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


@dataclass(frozen=True)
class Action:
    name: str
    help: str
    examples: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    uses_spec: bool = True


def _add_spec_args(p: argparse.ArgumentParser, spec_required: bool = False) -> None:
    p.add_argument("--skill", default=DEFAULT_SKILL, help=f"model family (default: {DEFAULT_SKILL})")
    p.add_argument("-e", "--experiment_spec", "--spec", dest="spec", required=spec_required, metavar="SPEC.yaml",
                   help="spec file (TAO depth_net keys accepted)" +
                        ("" if spec_required else "; without it, the embedded demo on synthetic scenes"))
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="dotted overrides, e.g. train.optim.lr=5e-6 dataset.train_dataset.batch_size=4")


def _add_tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///RESULTS_DIR/mlflow.db)")


def _tracking_uri(args: argparse.Namespace) -> Optional[str]:
    """Resolved once here and passed down: --tracking-uri, then MLFLOW_TRACKING_URI, else None (the default); a
    file store is refused (`check_not_file_store`)."""
    from automl.skills.shared import check_not_file_store

    uri = getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI") or None
    check_not_file_store(uri)
    return uri


# ---------------------------------------------------------------------------------------------------------------
# actions
# ---------------------------------------------------------------------------------------------------------------


def _synth_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (scene folders and train.txt/val.txt)")
    p.add_argument("--num", type=int, default=200, help="number of frames (default 200)")
    p.add_argument("--size", default="240x320", help="HxW of each frame (default 240x320)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    p.add_argument("--layout", choices=("nyu", "metric"), default="nyu",
                   help="nyu: rgb_XXXXX.jpg + sync_depth_XXXXX.png (uint16 mm); metric: PNG + float32 .npy metres")
    p.add_argument("--val-fraction", type=float, default=0.2, help="fraction of scenes held out for val.txt")
    p.add_argument("--skill", default=DEFAULT_SKILL, help=f"model family (default: {DEFAULT_SKILL})")


def _synth_run(args: argparse.Namespace) -> int:
    from automl.skills import get_skill
    from automl.skills.shared import UserError

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UserError(f"--size: expected HxW like 240x320, found {args.size!r}") from None
    if h < 28 or w < 28:
        raise UserError(f"--size: frames must be at least 28x28, found {h}x{w}")
    if args.num < 1:
        raise UserError(f"--num: expected at least 1 frame, found {args.num}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError(f"--val-fraction: expected a value in [0, 1), found {args.val_fraction}")
    res = get_skill(args.skill).synthesize(args.out, args.num, size=(h, w), seed=args.seed, layout=args.layout,
                                           val_fraction=args.val_fraction)
    print(res.summary())
    return 0


def _convert_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-e", "--experiment_spec", "--spec", dest="spec", required=True, metavar="CONVERT.yaml",
                   help="convert spec: data_root, image_dir_pattern, depth_dir_pattern, image_extension, "
                        "depth_extension, split_ratio, results_dir")
    p.add_argument("--skill", default=DEFAULT_SKILL, help=f"model family (default: {DEFAULT_SKILL})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. split_ratio=0.8")


def _convert_run(args: argparse.Namespace) -> int:
    from automl.skills import get_skill

    get_skill(args.skill).convert(args.spec, args.overrides)  # prints what it wrote
    return 0


def _validate_configure(p: argparse.ArgumentParser) -> None:
    _add_spec_args(p, spec_required=True)
    p.add_argument("--action", default="train", help="the action to check the spec for: train (default), "
                                                      "evaluate, inference, export, gen_trt_engine")


def _validate_run(args: argparse.Namespace) -> int:
    from automl.skills import get_skill

    report = get_skill(args.skill).validate(args.spec, args.overrides, args.action)
    for note in report.notices:
        print(f"notice: {note}", file=sys.stderr)
    print(report.text(args.spec), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else EXIT_USER_ERROR


def _off_configure(p: argparse.ArgumentParser) -> None:
    _add_spec_args(p)
    _add_tracking_arg(p)


def _off_run(args: argparse.Namespace) -> int:
    from automl.skills import get_skill

    skill = get_skill(args.skill)
    spec = skill.load_spec(args.spec, args.overrides, "train")
    result = skill.fit(spec, tracking_uri=_tracking_uri(args))
    skill.print_fit_summary(spec, result)
    return 0


def _run_configure(p: argparse.ArgumentParser) -> None:
    _add_spec_args(p)
    _add_tracking_arg(p)
    g = p.add_argument_group("search (each also settable in the spec's automl section)")
    g.add_argument("--num-trials", type=int, help="number of trials (automl.num_trials)")
    g.add_argument("--max-concurrent", type=int, help="trials at a time (default: what the cluster holds)")
    g.add_argument("--gpus-per-trial", type=_gpus_per_trial, metavar="N|auto",
                   help="GPUs per trial; fractions pack small encoders on one GPU, 2/4/8 run each trial as DDP over "
                        "that many GPUs; auto (the default) probes one trial on a GPU and packs 1, 2, 4 or 8 trials "
                        "per GPU (0 on CPUs)")
    g.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default 1)")
    g.add_argument("--scheduler", choices=("asha", "hyperband", "median", "none"),
                   help="early stopping of losing trials (default asha)")
    g.add_argument("--sampler", choices=("tpe", "random", "gp", "grid"),
                   help="how trials are proposed (default tpe; gp = Bayesian, grid = every combination)")
    g.add_argument("--budget-epochs", type=int, metavar="N",
                   help="stop the search once its trials have trained N epochs in total")
    g.add_argument("--search-space", metavar="FILE", help="search space YAML (default search_spaces/SKILL.yaml)")
    g.add_argument("--objective", metavar="METRIC", help="e.g. val/loss (min) or val/d1 (max)")
    g.add_argument("--address", metavar="auto|HOST:PORT", help="join an existing Ray cluster (see docs/multinode.md)")
    g.add_argument("--storage-path", metavar="PATH", help="Ray Tune storage; shared by all nodes on a cluster")
    g.add_argument("--resume", action="store_true", help="continue the search in the spec's results_dir")
    g.add_argument("--seed", type=int, help="sampler seed (automl.seed)")


def _gpus_per_trial(value: str) -> float | str:
    """`--gpus-per-trial`: a number of GPUs, or auto."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs (0.25, 1, 2) or auto, found {value!r}") from None


def _run_run(args: argparse.Namespace) -> int:
    from automl.search.driver import SearchOptions, run_search
    from automl.skills import get_skill

    skill = get_skill(args.skill)
    spec = skill.load_spec(args.spec, [*args.overrides, *_path_flag_overrides(args)], "train")
    opts = SearchOptions.from_spec(
        spec, num_trials=args.num_trials, max_concurrent=args.max_concurrent, gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial, scheduler=args.scheduler, sampler=args.sampler,
        budget_epochs=args.budget_epochs, metric=args.objective, address=args.address, seed=args.seed,
        resume=args.resume)
    _check_search_flags(opts)
    run_search(skill, spec, opts)
    return 0


def _path_flag_overrides(args: argparse.Namespace) -> list[str]:
    """The search's path-valued flags as spec overrides, so that the spec loader resolves them against the cwd
    like every other path (trials run in their own folders and must see absolute paths)."""
    flags = {"automl.search_space": args.search_space, "automl.storage_path": args.storage_path,
             "automl.tracking_uri": _tracking_uri(args)}
    return [f"{key}={value}" for key, value in flags.items() if value]


def _check_search_flags(opts) -> None:
    from automl.skills.shared import UserError

    if opts.num_trials < 1:
        raise UserError(f"--num-trials: expected at least 1, found {opts.num_trials}")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise UserError(f"--max-concurrent: expected at least 1, found {opts.max_concurrent}")
    if isinstance(opts.gpus_per_trial, (int, float)) and opts.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial: expected >= 0, found {opts.gpus_per_trial}")
    if opts.cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial: expected > 0, found {opts.cpus_per_trial}")
    if opts.budget_epochs is not None and opts.budget_epochs < 1:
        raise UserError(f"--budget-epochs: expected at least 1, found {opts.budget_epochs}")


def _train_configure(p: argparse.ArgumentParser) -> None:
    _run_configure(p)


def _train_run(args: argparse.Namespace) -> int:
    """TAO's train: routed by automl.policy (auto: search; off: plain training through the same trainer)."""
    from automl.skills import get_skill

    skill = get_skill(args.skill)
    spec = skill.load_spec(args.spec, args.overrides, "train")
    if spec.automl.policy == "off":
        print("automl.policy=off: plain training (no search)", file=sys.stderr)
        result = skill.fit(spec, tracking_uri=_tracking_uri(args))
        skill.print_fit_summary(spec, result)
        return 0
    print("automl.policy=auto: searching (automl.policy=off for one plain training run)", file=sys.stderr)
    return _run_run(args)


def _skill_action(action: str, force_key: Optional[str] = None
                  ) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    """configure/run for an action that loads a spec and calls the skill's method of the same name; `force_key`
    adds `--force`, which sets that spec key (an existing output file is replaced)."""

    def configure(p: argparse.ArgumentParser) -> None:
        _add_spec_args(p, spec_required=True)
        if force_key:
            p.add_argument("--force", action="store_true",
                           help=f"replace an existing output file (same as {force_key}=true)")

    def run(args: argparse.Namespace) -> int:
        from automl.skills import get_skill

        skill = get_skill(args.skill)
        overrides = list(args.overrides) + ([f"{force_key}=true"] if force_key and args.force else [])
        spec = skill.load_spec(args.spec, overrides, action)
        getattr(skill, action)(spec)
        return 0

    return configure, run


_evaluate_configure, _evaluate_run = _skill_action("evaluate")
_inference_configure, _inference_run = _skill_action("inference")
_export_configure, _export_run = _skill_action("export", force_key="export.overwrite")
_gen_trt_engine_configure, _gen_trt_engine_run = _skill_action("gen_trt_engine", force_key="gen_trt_engine.overwrite")


def _report_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="the results_dir of a finished `automl run`")
    p.add_argument("--num-images", type=int, default=4,
                   help="validation images shown with the winner's predictions (default 4; 0 leaves them out)")
    p.add_argument("--out", metavar="DIR", help="where to write report.html and predictions.png (default RESULTS_DIR/report)")


def _report_run(args: argparse.Namespace) -> int:
    from automl.report import write_report
    from automl.skills.shared import UserError

    if args.num_images < 0:
        raise UserError(f"--num-images: expected 0 or more, found {args.num_images}")
    report = write_report(args.results_dir, num_images=args.num_images, out_dir=args.out,
                          predictions=args.num_images > 0)
    for key, note in report.notes.items():
        print(f"{key}: {note}", file=sys.stderr)
    print(f"wrote {report.html} ({sum(1 for f in report.figures if f.drawn)} figures; opens offline)")
    return 0


def _ui_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="the results_dir of `automl run` (or `automl off`)")
    p.add_argument("--port", type=int, default=None,
                   help="port of the UI (default: the first free one of 5000..5019; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")


def _ui_run(args: argparse.Namespace) -> int:
    from automl.ui import serve

    return serve(args.results_dir, host=args.host, port=args.port)


ACTIONS: list[Action] = [
    Action("synth", "generate synthetic RGB-D scenes (rooms with objects, exact depth) for demos and tests",
           "automl synth --out data/synth --num 300 --size 240x320 --seed 0 --layout nyu",
           _synth_configure, _synth_run, uses_spec=False),
    Action("convert", "write annotation files (train/val or test) from an image + depth folder tree (TAO convert)",
           "automl convert -e experiments/depth_net_mono/convert.yaml data_root=/data/nyu split_ratio=0.8",
           _convert_configure, _convert_run),
    Action("validate", "every problem of a spec and of the files its action reads, at once; exit 0 when it would run",
           "automl validate -e spec.yaml --action evaluate", _validate_configure, _validate_run),
    Action("run", "hyperparameter search: Ray Tune + Optuna TPE + ASHA, NaN pruning, MLflow, the winner evaluated",
           "automl run --skill depth_net_mono                     # embedded demo search on synthetic scenes (CPU)\n"
           "automl run -e spec.yaml --num-trials 24 --gpus-per-trial 0.5 --scheduler asha\n"
           "automl run -e spec.yaml --resume                      # continue after a crash",
           _run_configure, _run_run),
    Action("train", "TAO's train: a search when automl.policy=auto (default), plain training when off",
           "automl train -e spec.yaml automl.policy=off", _train_configure, _train_run),
    Action("off", "plain training, no search (the same trainer a search trial runs)",
           "automl off -e experiments/depth_net_mono/train_metric.yaml train.num_epochs=5\n"
           "automl off --skill depth_net_mono          # embedded demo: tiny model, synthetic scenes, CPU",
           _off_configure, _off_run),
    Action("evaluate", "depth metrics (d1, abs_rel, rmse, ...) of a checkpoint on dataset.test_dataset",
           "automl evaluate -e experiments/depth_net_mono/evaluate.yaml evaluate.checkpoint=results/x/best.ckpt",
           _evaluate_configure, _evaluate_run),
    Action("inference", "depth maps (colour PNG + raw NPY/PFM) for images, at each image's own size",
           "automl inference -e experiments/depth_net_mono/inference.yaml inference.checkpoint=best.ckpt "
           "dataset.infer_dataset.data_root=photos/",
           _inference_configure, _inference_run),
    Action("export", "ONNX (opset >= 17, dynamic batch) of a checkpoint, validated against PyTorch in ONNX Runtime",
           "automl export -e experiments/depth_net_mono/export.yaml export.checkpoint=results/x/best.ckpt --force",
           _export_configure, _export_run),
    Action("gen_trt_engine", "TensorRT engine (BF16 by default) from an exported ONNX file",
           "automl gen_trt_engine -e experiments/depth_net_mono/gen_trt_engine.yaml "
           "gen_trt_engine.onnx_file=results/x/export/model.onnx",
           _gen_trt_engine_configure, _gen_trt_engine_run),
    Action("report", "the HTML report of a finished search (written by `automl run` too): curves, Optuna plots, "
                     "leaderboard, the winner's predictions",
           "automl report results/demo                 # writes results/demo/report/report.html\n"
           "automl report results/demo --num-images 8 --out /tmp/report",
           _report_configure, _report_run, uses_spec=False),
    Action("ui", "the MLflow UI on a search's store (127.0.0.1); prints the URL of the search's parent run",
           "automl ui results/demo                     # then open the printed URL; Ctrl-C stops it\n"
           "automl ui results/demo --port 5001",
           _ui_configure, _ui_run, uses_spec=False),
]


def _add_verbosity_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="show warnings and errors only (no progress lines)")
    group.add_argument("-v", "--verbose", action="store_true", help="also show debug messages")


def build_parser() -> argparse.ArgumentParser:
    from automl import __version__

    epilog = "examples:\n" + "\n".join(
        textwrap.indent(a.examples, "  ") for a in ACTIONS) + "\n\nrun 'automl ACTION --help' for an action's options"
    parser = argparse.ArgumentParser(
        prog="automl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="AutoML finetuning of Depth Anything V2 (TAO depth_net specs work as they are).",
        epilog=epilog)
    parser.add_argument("--version", action="version", version=f"automl {__version__}")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", title="actions")
    for a in ACTIONS:
        p = sub.add_parser(a.name, help=a.help, description=a.help,
                           epilog="examples:\n" + textwrap.indent(a.examples, "  "),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        a.configure(p)
        _add_verbosity_args(p)
        p.set_defaults(_run=a.run)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """`parser.parse_args`, naming the nearest valid action or option when one is unknown (exit status 2)."""
    import difflib

    argv = list(sys.argv[1:] if argv is None else argv)
    names = [a.name for a in ACTIONS]
    if argv and not argv[0].startswith("-") and argv[0] not in names:
        close = difflib.get_close_matches(argv[0], names, n=1, cutoff=0.5)
        parser.error(f"unknown action {argv[0]!r}" + (f"; did you mean '{close[0]}'?" if close else "")
                     + f" (actions: {', '.join(names)})")
    args, extras = parser.parse_known_args(argv)
    if extras:
        action = getattr(args, "action", None)
        subs = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        target = subs.get(action, parser)
        options = [o for a in target._actions for o in a.option_strings]
        hints = []
        for item in extras:
            name = item.split("=", 1)[0]
            close = difflib.get_close_matches(name, options, n=1, cutoff=0.6) if item.startswith("-") else []
            if close:
                hints.append(f"did you mean {close[0]} (for {name})?")
        target.error(f"unrecognized arguments: {' '.join(extras)}" + ("; " + " ".join(hints) if hints else "")
                     + (f" (automl {action} --help lists its options)" if action else ""))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    from automl.skills.shared import NonFiniteLossError, UserError

    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "action", None):
        parser.print_help()
        return EXIT_USER_ERROR
    from automl import logs

    logs.configure(logs.QUIET if args.quiet else logs.VERBOSE if args.verbose else logs.NORMAL)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except NonFiniteLossError as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except Exception as exc:
        import torch

        from automl.skills.shared import os_error_message

        message = os_error_message(exc)  # disk full, read-only, no permission, folder vs file: one line, no trace
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            return EXIT_USER_ERROR
        if not isinstance(exc, torch.OutOfMemoryError):
            raise
        from automl.skills.shared import out_of_memory_message

        print(f"error: out of memory: {out_of_memory_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
