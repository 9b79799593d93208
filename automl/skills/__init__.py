"""Skills: one per model family. A skill maps the CLI's actions onto its trainer's functions.

`depth_net_mono` is the only skill for now; `register` lets another model family be added beside it.
"""

from __future__ import annotations

from typing import Callable, Dict

from automl.skills.base import Skill

DEFAULT_SKILL = "depth_net_mono"  # the CLI's --skill default; summary.json names the skill of a search

_REGISTRY: Dict[str, Callable[[], Skill]] = {}


def register(name: str, factory: Callable[[], Skill]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_skill(name: str) -> Skill:
    from automl.skills.shared import UserError

    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, available(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"--skill: unknown skill {name!r}{hint}; available: {', '.join(available())}")
    return _REGISTRY[name]()


def _depth_net_mono() -> Skill:
    from automl.skills.depth_net_mono import DepthNetMono

    return DepthNetMono()


register("depth_net_mono", _depth_net_mono)
