"""Search spaces are data (YAML): parameters over dotted spec keys, with ranges, log scales and conditions, plus the
objective and its direction. Every key is checked against the skill's spec (TAO silently drops unknown ones) and
every bound against the spec's own validation, so a bad space fails before any trial starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from automl.skills.shared import SpecError, SpecProblem, UserError

OBJECTIVES = ("val/loss", "val/d1", "val/d2", "val/d3", "val/abs_rel", "val/sq_rel", "val/rmse", "val/rmse_log",
              "val/log10", "val/silog", "train_loss")
MAXIMISE = ("val/d1", "val/d2", "val/d3")


def infer_mode(metric: str) -> str:
    """Direction from the metric's name: accuracies (d1..d3) up, losses and errors down."""
    return "max" if metric in MAXIMISE else "min"


@dataclass(frozen=True)
class Param:
    name: str  # dotted spec key
    type: str  # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()
    when: Mapping[str, tuple] = field(default_factory=dict)

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log,
                                       step=None if self.log else self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=1 if self.log else int(self.step or 1))
        return trial.suggest_categorical(self.name, list(self.choices))

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(values.get(k) in allowed for k, allowed in self.when.items())


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    metric: str
    mode: str
    source: str
    initial_points: tuple = ()  # evaluated right after the baseline (partial points: the rest is sampled)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __call__(self, trial: Any) -> None:
        """Optuna define-by-run sampling (picklable, so Ray can checkpoint the searcher): parameters in declaration
        order; a conditional parameter only when its condition holds."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)

    def baseline(self, spec: Any) -> dict[str, Any]:
        """The spec's own values of the searched keys (evaluated as the first trial), clipped into the space."""
        from omegaconf import OmegaConf

        point: dict[str, Any] = {}
        for p in self.params:
            if not p.active(point):
                continue
            value = OmegaConf.select(spec, p.name)
            if p.type == "categorical":
                if value not in p.choices:
                    continue  # the spec's value is outside the space: let the sampler choose
            else:
                value = min(max(float(value), float(p.low)), float(p.high))
                if p.type == "int":
                    value = int(round(value))
            point[p.name] = value
        return point

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"objective": {"metric": self.metric, "mode": self.mode}, "parameters": {}}
        for p in self.params:
            d: dict[str, Any] = {"type": p.type}
            if p.type == "categorical":
                d["choices"] = list(p.choices)
            else:
                d.update(low=p.low, high=p.high, log=p.log)
                if p.step is not None:
                    d["step"] = p.step
            if p.when:
                d["when"] = {k: list(v) for k, v in p.when.items()}
            out["parameters"][p.name] = d
        return out


def _probe_values(p: Param) -> list[Any]:
    """The values of `p` that stand for all it can produce: every choice, or both bounds."""
    values = list(p.choices) if p.type == "categorical" else [p.low, p.high]
    return [int(v) if p.type == "int" else v for v in values]


def invalid_values(params: Sequence[Param], skill: Any, spec: Any) -> list[tuple[str, Any, str]]:
    """(parameter, value, the spec's message) for each probe value (`_probe_values`) the skill's spec refuses.

    The values are tried in rounds, one value of every parameter at once (all lows, all highs, each choice in
    turn), so a valid space costs 2-3 validations of the spec instead of one per value (0.2 s each on 2 cores); a
    round the spec refuses is tried again value by value, so every message names its own value."""
    probes = {p.name: _probe_values(p) for p in params}
    rounds = max((len(v) for v in probes.values()), default=0)
    found: list[tuple[str, Any, str]] = []
    for i in range(rounds):
        combo = {name: values[min(i, len(values) - 1)] for name, values in probes.items()}
        try:
            skill.with_overrides(spec, combo)
            continue
        except SpecError:
            pass
        for name, v in combo.items():
            if i >= len(probes[name]):
                continue  # the last value of a shorter list, tried in its own round
            try:
                skill.with_overrides(spec, {name: v})
            except SpecError as exc:
                found += [(name, v, sub.message) for sub in exc.problems]
    order = list(probes)
    return sorted(found, key=lambda f: (order.index(f[0]), probes[f[0]].index(f[1])))


def load_search_space(path: str | Path, *, skill: Any, spec: Any, metric: Optional[str] = None,
                      mode: Optional[str] = None) -> SearchSpace:
    """Parse and check a search-space file against `skill`'s spec. All problems are raised together."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"search space {path}: not valid YAML ({exc})") from None
    return parse_search_space(raw, skill=skill, spec=spec, source=str(path), metric=metric, mode=mode)


def parse_search_space(raw: Mapping[str, Any], *, skill: Any, spec: Any, source: str = "search space",
                       metric: Optional[str] = None, mode: Optional[str] = None) -> SearchSpace:
    problems: list[SpecProblem] = []

    def bad(key: str, msg: str) -> None:
        problems.append(SpecProblem(key, msg, source))

    if not isinstance(raw, Mapping):
        raise SpecError([SpecProblem("<root>", "expected a mapping with 'objective' and 'parameters'", source)],
                        source)
    for key in raw:
        if key not in ("objective", "parameters", "initial_points"):
            bad(str(key), "unknown section; expected 'objective', 'parameters' and optionally 'initial_points'")
    obj = raw.get("objective") or {}
    file_metric = obj.get("metric") or "val/loss"
    metric = metric or file_metric
    if metric not in OBJECTIVES:
        bad("objective.metric", f"found {metric!r}, expected one of: {', '.join(OBJECTIVES)}")
    # the file's mode is the direction of the file's metric: another metric (--objective) gets its own direction
    mode = mode or (obj.get("mode") if metric == file_metric else None) or infer_mode(metric)
    if mode not in ("min", "max"):
        bad("objective.mode", f"found {mode!r}, expected min or max")

    params: list[Param] = []
    entries = raw.get("parameters") or {}
    if not isinstance(entries, Mapping) or not entries:
        bad("parameters", "expected a mapping of dotted spec keys to parameter definitions, found none")
        entries = {}
    for name, d in entries.items():
        key = f"parameters.{name}"
        if not skill.known_key(name):
            near = skill.nearest_key(name)
            bad(key, f"'{name}' is not a key of the {skill.name} spec" + (f"; did you mean '{near}'?" if near else ""))
            continue
        if not isinstance(d, Mapping):
            bad(key, f"expected a mapping (type, low/high or choices), found {d!r}")
            continue
        allowed = {"type", "low", "high", "log", "step", "choices", "when"}
        for extra in set(d) - allowed:
            bad(f"{key}.{extra}", f"unknown field; expected {', '.join(sorted(allowed))}")
        ptype = d.get("type")
        if ptype not in ("float", "int", "categorical"):
            bad(f"{key}.type", f"found {ptype!r}, expected float, int or categorical")
            continue
        when = {}
        for dep, vals in (d.get("when") or {}).items():
            vals = tuple(vals) if isinstance(vals, (list, tuple)) else (vals,)
            if dep not in [p.name for p in params]:
                bad(f"{key}.when", f"condition on '{dep}', which is not a parameter declared before '{name}'")
            when[dep] = vals
        if ptype == "categorical":
            choices = d.get("choices")
            if not isinstance(choices, (list, tuple)) or not choices:
                bad(f"{key}.choices", f"expected a non-empty list, found {choices!r}")
                continue
            params.append(Param(name, "categorical", choices=tuple(choices), when=when))
            continue
        low, high, log, step = d.get("low"), d.get("high"), bool(d.get("log", False)), d.get("step")
        try:
            low, high = float(low), float(high)
        except (TypeError, ValueError):
            bad(key, f"expected numeric low and high, found low={d.get('low')!r}, high={d.get('high')!r}")
            continue
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            bad(key, f"found low={low:g} >= high={high:g}; expected low < high")
            continue
        if log and low <= 0:
            bad(f"{key}.low", f"log scale needs low > 0, found {low:g}")
            continue
        if ptype == "int" and (not low.is_integer() or not high.is_integer()):
            bad(key, f"int parameter needs integer bounds, found low={low:g}, high={high:g}")
            continue
        if step is not None and (not isinstance(step, (int, float)) or step <= 0):
            bad(f"{key}.step", f"expected a positive number, found {step!r}")
            continue
        params.append(Param(name, ptype, low=low, high=high, log=log, step=step, when=when))

    # every value the space can produce must be a valid spec value (e.g. a scheduler name, lr > 0)
    if not problems:
        for name, v, message in invalid_values(params, skill, spec):
            bad(f"parameters.{name}", f"value {v!r} is invalid for the spec: {message}")
    points = []
    by_name = {p.name: p for p in params}
    for i, point in enumerate(raw.get("initial_points") or []):
        if not isinstance(point, Mapping):
            bad(f"initial_points.{i}", f"expected a mapping of parameter names to values, found {point!r}")
            continue
        for k, v in point.items():
            p = by_name.get(k)
            if p is None:
                bad(f"initial_points.{i}.{k}", f"not a parameter of this space ({', '.join(by_name)})")
            elif p.type == "categorical" and v not in p.choices:
                bad(f"initial_points.{i}.{k}", f"found {v!r}, expected one of {list(p.choices)}")
            elif p.type != "categorical" and (not isinstance(v, (int, float)) or not p.low <= v <= p.high):
                bad(f"initial_points.{i}.{k}", f"found {v!r}, expected a number in [{p.low:g}, {p.high:g}]")
        points.append(dict(point))
    if problems:
        raise SpecError(problems, source)
    return SearchSpace(tuple(params), metric, mode, source, tuple(points))
