"""`automl validate`: every problem of a spec and of the files its action reads, in one report.

The spec is loaded as the action would load it (structure, values, TAO conventions, data files); then the files
the action reads are checked without running anything: checkpoints / ONNX files / engines (and their JSON
sidecars), backbone weights, and each annotation file line by line (every listed image and depth file must exist).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from trainer.config.loader import _read_yaml, _set_dotted, build_spec, parse_overrides
from trainer.config.tao import normalize_raw, round14
from trainer.errors import DataError, SpecError, SpecProblem, UserError

ACTIONS = ("train", "evaluate", "inference", "export", "gen_trt_engine")

# files an action reads: (spec key, what it is, required)
_FILES: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "train": (("model.mono_backbone.pretrained_path", "weights", False),
              ("train.pretrained_model_path", "weights", False),
              ("train.resume_training_checkpoint_path", "weights", False)),
    "export": (("export.checkpoint", "weights", True),),
    "gen_trt_engine": (("gen_trt_engine.onnx_file", "exported", True),),
}
_ANNOTATED_SPLITS = {"train": ("train_dataset", "val_dataset"), "evaluate": ("test_dataset",),
                     "inference": ("infer_dataset",)}


@dataclass
class ValidationReport:
    """Problems (each naming its key or file) and notices; `ok` when the action would run."""

    action: str
    problems: list[SpecProblem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self, source: str) -> str:
        if self.ok:
            return f"{source}: valid for `{self.action}` ({len(self.notices)} notice(s) above)"
        lines = [f"{source}: {len(self.problems)} problem(s) for `{self.action}`:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _raw_tree(path: Optional[str], overrides: Sequence[str]) -> dict:
    tree = _read_yaml(Path(path)) if path else {}
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    normalize_raw(tree)
    return tree


def _check_file(tree: dict, key: str, kind: str, required: bool) -> list[SpecProblem]:
    value = _get(tree, key)
    if not value:
        return [SpecProblem(key, f"not given; `{kind}` file expected")] if required else []
    p = Path(str(value))
    if not p.exists():
        return [SpecProblem(key, f"file not found: {p}")]
    if kind == "exported" and not Path(str(p) + ".json").is_file():
        return [SpecProblem(key, f"{p}.json not found: the sidecar `automl export` writes beside the file (model "
                                 f"type, depth range, input size); export it again here")]
    return []


def _model_files(tree: dict, action: str) -> list[SpecProblem]:
    if action in _FILES:
        return [p for key, kind, req in _FILES[action] for p in _check_file(tree, key, kind, req)]
    if action not in ("evaluate", "inference"):
        return []
    keys = [(f"{action}.trt_engine", "exported"), (f"{action}.onnx_file", "exported"), (f"{action}.checkpoint",
                                                                                        "weights")]
    given = [(k, kind) for k, kind in keys if _get(tree, k)]
    if not given:
        return [SpecProblem(f"{action}.checkpoint", f"no model to run: set {action}.checkpoint (or "
                                                    f"{action}.onnx_file / {action}.trt_engine)")]
    return [p for k, kind in given for p in _check_file(tree, k, kind, True)]


def _fixed_size(tree: dict, action: str) -> list[SpecProblem]:
    """An ONNX file / engine exported with a fixed height/width takes only that size (trainer.deploy refuses another
    evaluate/inference input size at run time)."""
    import json

    problems = []
    for key in (f"{action}.trt_engine", f"{action}.onnx_file"):
        value = _get(tree, key)
        side = Path(str(value) + ".json") if value else None
        if side is None or not side.is_file():
            continue
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            problems.append(SpecProblem(key, f"{side}: unreadable sidecar ({exc})"))
            continue
        if meta.get("dynamic_hw") or "input_height" not in meta:
            continue
        for k in ("input_height", "input_width"):
            asked = _get(tree, f"{action}.{k}")
            if isinstance(asked, int) and asked > 0 and round14(asked) != int(meta[k]):
                problems.append(SpecProblem(f"{action}.{k}", f"found {asked}, but {value} takes only "
                                                             f"{meta['input_height']}x{meta['input_width']} inputs "
                                                             f"(exported without dynamic height/width); remove "
                                                             f"{action}.{k} or set it to {meta[k]}"))
    return problems


def _annotation_files(tree: dict, action: str) -> list[SpecProblem]:
    from trainer.data.annotations import read_annotation_file

    problems = []
    for split in _ANNOTATED_SPLITS.get(action, ()):
        for i, src in enumerate(_get(tree, f"dataset.{split}.data_sources") or []):
            data_file = src.get("data_file") if isinstance(src, dict) else None
            if not data_file or not Path(str(data_file)).is_file():
                continue  # reported by the spec checks
            try:
                read_annotation_file(Path(str(data_file)), require_depth=split != "infer_dataset", check_files=True)
            except DataError as exc:
                problems.append(SpecProblem(f"dataset.{split}.data_sources.{i}.data_file", str(exc)))
    return problems


def validate(path: Optional[str], overrides: Sequence[str] = (), action: str = "train") -> ValidationReport:
    """Every problem of the spec at `path` (+ overrides) for `action`, and of the files the action reads."""
    if action not in ACTIONS:
        raise UserError(f"--action: found {action!r}, expected one of {', '.join(ACTIONS)}")
    report = ValidationReport(action)
    try:
        tree = _raw_tree(path, overrides)
    except SpecError as exc:  # unreadable YAML or malformed overrides: nothing else can be checked
        report.problems += exc.problems
        return report
    try:
        build_spec(_read_yaml(Path(path)) if path else {}, overrides, source=path, action=action,
                   notice=report.notices.append)
    except SpecError as exc:
        report.problems += exc.problems
    if action in ("evaluate", "inference"):
        report.problems += _fixed_size(tree, action)
    report.problems += _model_files(tree, action)
    report.problems += _annotation_files(tree, action)
    return report
