"""Loading and saving Depth Anything V2 weights in every layout users bring.

Layouts, detected from the file's contents:

- `released`: the flat state_dict of the released checkpoints (`pretrained.*`, `depth_head.*`), also with a
  `module.` prefix on every key (a DDP model saved directly);
- `original-training`: `{'model': state_dict, 'optimizer': ..., 'epoch': ..., 'previous_best': ...}` as written by
  the original metric_depth training script (keys prefixed with `module.`);
- `lightning`: this project's Lightning checkpoints, `{'state_dict': {'model.<released key>': ...},
  'hyper_parameters': {'spec': {...}}, ...}`;
- `dinov2`: a raw DINOv2 backbone state_dict as Meta publishes it (`dinov2_vitl14_pretrain.pth`: `cls_token`,
  `pos_embed`, `patch_embed.*`, `blocks.*`, `norm.*`, no `pretrained.` prefix), which TAO's relative recipe uses
  for `model.mono_backbone.pretrained_path`; its keys become `pretrained.*` (backbone only: there is no head);
- `huggingface`: Hugging Face's `DepthAnythingForDepthEstimation` (`backbone.*`, `neck.*`, `head.*`), as a
  `.safetensors` / `.bin` file or a model folder holding one.

Pickled files are always read with `torch.load(..., weights_only=True)`: a file that would run code when unpickled
is refused. Every problem raises `CheckpointError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from trainer.errors import CheckpointError, first_line
from trainer.model.backbone import ENCODER_CONFIGS
from trainer.model.depth_anything import (
    DepthAnythingV2,
    convert_hf_state_dict,
    convert_original_state_dict,
    is_hf_state_dict,
    to_original_state_dict,
)

__all__ = ["LoadReport", "load_weights", "read_checkpoint", "read_checkpoint_spec", "save_released"]

PathLike = Union[str, "os.PathLike[str]"]
SHOWN = 10  # keys listed per category in error messages
HF_FILES = ("model.safetensors", "pytorch_model.bin")

RELEASED = "released"
ORIGINAL_TRAINING = "original-training"
LIGHTNING = "lightning"
HUGGINGFACE = "huggingface"
DINOV2 = "dinov2"
_DINOV2_MARKERS = ("patch_embed.proj.weight", "cls_token", "pos_embed")


@dataclass
class LoadReport:
    """What `load_weights` did."""

    path: str
    layout: str  # released | original-training | lightning | huggingface | dinov2
    loaded: int  # tensors copied into the model
    backbone_only: bool = False
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint lacks (strict=False only)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model lacks (strict=False only)
    mismatched: list[str] = field(default_factory=list)  # keys present in both with other shapes (strict=False)
    skipped: list[str] = field(default_factory=list)  # keys deliberately not used (head with backbone_only, ...)
    spec: Optional[dict] = None  # the training spec stored in a Lightning checkpoint

    def summary(self) -> str:
        what = "backbone weights" if self.backbone_only else "weights"
        parts = [f"loaded {self.loaded} {what} from {self.path} ({self.layout} layout)"]
        for name in ("missing", "unexpected", "mismatched", "skipped"):
            items = getattr(self, name)
            if items:
                parts.append(f"{len(items)} {name}")
        return ", ".join(parts)


@dataclass
class Checkpoint:
    """A checkpoint file read and normalised to this model's keys."""

    path: str
    layout: str
    state_dict: dict[str, torch.Tensor]
    spec: Optional[dict] = None
    ignored: list[str] = field(default_factory=list)  # entries that are not part of the network


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def _resolve(path: PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in HF_FILES:
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p}: is a folder without a weights file; expected a checkpoint file or a Hugging "
                              f"Face model folder holding one of {', '.join(HF_FILES)}")
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    return p


def _load_object(p: Path) -> Any:
    """The file's contents: safetensors or a weights-only pickle. Raises CheckpointError."""
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        except Exception as e:  # noqa: BLE001 - any failure here means a bad file
            raise CheckpointError(f"{p}: cannot read safetensors file, truncated or corrupt "
                                  f"({type(e).__name__}: {first_line(e)})") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:  # a pickle that names a function or class: only then is it code (random bytes fail here too)
            what = f" (it references {found[1]})"
            raise CheckpointError(
                f"{p}: refused: not a plain weights file{what}. Loading it would run Python code from the file; "
                f"only tensors, dicts, lists, strings and numbers are accepted. If you trust its source, re-save its "
                f"state_dict with torch.save(model.state_dict(), path)."
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        raise CheckpointError(f"{p}: not a readable checkpoint ({p.stat().st_size} bytes): neither a PyTorch zip "
                              f"file nor a pickle of tensors (UnpicklingError: "
                              f"{detail[1].strip() if detail else first_line(e)}); truncated, corrupt, or another "
                              f"kind of file") from None
    except Exception as e:  # noqa: BLE001 - RuntimeError (zip), EOFError, ValueError, ... all mean a bad file
        raise CheckpointError(f"{p}: cannot read checkpoint, truncated or corrupt "
                              f"({type(e).__name__}: {first_line(e)})") from None

def _strip_wrappers(key: str) -> str:
    """Drop DDP (`module.`) prefixes and torch.compile (`_orig_mod.`) segments."""
    while key.startswith("module."):
        key = key[len("module."):]
    return key.replace("_orig_mod.", "")


def _tensors(mapping: Mapping[str, Any], where: str, p: Path) -> dict[str, torch.Tensor]:
    non_tensors = [k for k, v in mapping.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(f"{p}: {where} holds non-tensor entries such as {non_tensors[:3]}; "
                              f"expected a state_dict (key -> tensor)")
    return {str(k): v for k, v in mapping.items()}


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read a checkpoint in any supported layout, with keys normalised to this model's names."""
    p = _resolve(path)
    obj = _load_object(p)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p}: expected a dict (a state_dict or a training checkpoint), found "
                              f"{type(obj).__name__}")
    spec: Optional[dict] = None
    ignored: list[str] = []
    if isinstance(obj.get("state_dict"), Mapping):
        layout = LIGHTNING
        hp = obj.get("hyper_parameters")
        if isinstance(hp, Mapping) and isinstance(hp.get("spec"), Mapping):
            spec = dict(hp["spec"])
        raw = _tensors(obj["state_dict"], "'state_dict'", p)
        if any(_strip_wrappers(k).startswith("model.") for k in raw):
            sd = {}
            for k, v in raw.items():
                k = _strip_wrappers(k)
                if k.startswith("model."):
                    sd[_strip_wrappers(k[len("model."):])] = v
                else:
                    ignored.append(k)  # parts of the LightningModule outside the network
        else:
            sd = {_strip_wrappers(k): v for k, v in raw.items()}
    elif isinstance(obj.get("model"), Mapping):
        layout = ORIGINAL_TRAINING
        sd = {_strip_wrappers(k): v for k, v in _tensors(obj["model"], "'model'", p).items()}
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        layout = RELEASED
        sd = {_strip_wrappers(str(k)): v for k, v in obj.items()}
    else:
        keys = [str(k) for k in list(obj)[:SHOWN]]
        raise CheckpointError(
            f"{p}: unrecognised checkpoint: top-level entries {keys}; expected a state_dict (released layout: "
            f"pretrained.*, depth_head.*), an original training checkpoint ({{'model': ...}}), a Lightning "
            f"checkpoint ({{'state_dict': ...}}) or Hugging Face weights (backbone.*, neck.*, head.*)"
        )
    if is_hf_state_dict(sd):
        layout = HUGGINGFACE
        sd = convert_hf_state_dict(sd)
    elif _is_raw_dinov2(sd):
        layout = DINOV2
        sd = {f"pretrained.{k}": v for k, v in sd.items()}
    sd = convert_original_state_dict(sd)
    return Checkpoint(path=str(p), layout=layout, state_dict=sd, spec=spec, ignored=ignored)


def _is_raw_dinov2(sd: Mapping[str, Any]) -> bool:
    """A DINOv2 backbone saved on its own: its ViT keys at the top level, nothing of a depth model."""
    return all(k in sd for k in _DINOV2_MARKERS) and any(k.startswith("blocks.") for k in sd) \
        and not any(k.startswith(("pretrained.", "depth_head.")) for k in sd)


def read_checkpoint_spec(path: PathLike) -> Optional[dict]:
    """The training spec (plain dict) stored in one of this project's Lightning checkpoints; None for other
    layouts (released, original training, Hugging Face), which do not record one."""
    p = _resolve(path)
    obj = _load_object(p)
    if isinstance(obj, Mapping):
        hp = obj.get("hyper_parameters")
        if isinstance(hp, Mapping) and isinstance(hp.get("spec"), Mapping):
            return dict(hp["spec"])
    return None


# --------------------------------------------------------------------------------------------------------------
# Diagnosis
# --------------------------------------------------------------------------------------------------------------


def _block_count(keys: Any) -> int:
    idx = {int(m[1]) for k in keys if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _encoder_shape(sd: Mapping[str, torch.Tensor]) -> Optional[tuple[int, int]]:
    """(embed_dim, block count) of the checkpoint's backbone, from pos_embed / cls_token and block keys."""
    t = sd.get("pretrained.pos_embed", sd.get("pretrained.cls_token"))
    return None if t is None else (int(t.shape[-1]), _block_count(sd))


def _encoder_label(dim: int, depth: int) -> str:
    """'vitl (embed_dim 1024, 24 blocks)' or 'a custom ViT (embed_dim 64, 4 blocks)'."""
    name = next((n for n, c in ENCODER_CONFIGS.items() if c.embed_dim == dim and c.depth == depth), None)
    shape = f"embed_dim {dim}, {depth} blocks"
    return f"{name} ({shape})" if name else f"a custom ViT ({shape})"


def _model_encoder(model: DepthAnythingV2) -> str:
    c = model.encoder_config
    return f"{model.encoder} (embed_dim {c.embed_dim}, {c.depth} blocks)"


def _natural(key: str) -> list:
    """Sort key that orders blocks.2 before blocks.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _show(items: list[str]) -> str:
    more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "\n    ".join(items[:SHOWN]) + more


def _hints(ck: Checkpoint, model: DepthAnythingV2, missing: list[str], unexpected: list[str],
           mismatched: list[str]) -> list[str]:
    sd = ck.state_dict
    hints: list[str] = []
    found = _encoder_shape(sd)
    c = model.encoder_config
    if found is None and not any(k.startswith(("pretrained.", "depth_head.")) for k in sd):
        hints.append(f"no key of the Depth Anything V2 layouts was found (first keys: {list(sd)[:5]})")
    elif found is not None and found != (c.embed_dim, c.depth):
        hints.append(f"the checkpoint looks like encoder {_encoder_label(*found)}; the model is "
                     f"{_model_encoder(model)}: set model.encoder to match the checkpoint "
                     f"(model.custom for a custom ViT)")
    elif any(k.startswith("depth_head.") for k in mismatched):
        w = sd.get("depth_head.scratch.layer1_rn.weight")
        if w is not None and w.shape[0] != c.features:
            hints.append(f"the checkpoint's DPT head has features {w.shape[0]}; the model's has {c.features} "
                         f"(model.custom.features / out_channels)")
    if any(".bn1." in k or ".bn2." in k for k in unexpected):
        hints.append("the checkpoint's head has batch norm: set model.mono_backbone.use_bn: true")
    if any(".bn1." in k or ".bn2." in k for k in missing):
        hints.append("the model's head has batch norm but the checkpoint's has none: set model.mono_backbone.use_bn: false")
    if any(k.startswith("depth_head.readout_projects.") for k in unexpected):
        hints.append("the checkpoint's head has readout projections: set model.mono_backbone.use_clstoken: true")
    if any(k.startswith("depth_head.readout_projects.") for k in missing):
        hints.append("the model's head has readout projections but the checkpoint's has none: "
                     "set model.mono_backbone.use_clstoken: false")
    if ck.spec is not None:
        model_spec = ck.spec.get("model") if isinstance(ck.spec.get("model"), Mapping) else {}
        data_spec = ck.spec.get("dataset") if isinstance(ck.spec.get("dataset"), Mapping) else {}
        hints.append(f"the checkpoint's training spec says model_type {model_spec.get('model_type')!r}, "
                     f"encoder {model_spec.get('encoder')!r}, max_depth {data_spec.get('max_depth')!r}")
    elif mismatched or missing:
        hints.append("relative and metric checkpoints have identical keys: whether this one is relative or metric "
                     "cannot be told from its weights")
    return hints


def _mismatch_error(ck: Checkpoint, model: DepthAnythingV2, missing: list[str], unexpected: list[str],
                    mismatched: list[str], backbone_only: bool) -> CheckpointError:
    scope = " (backbone only: pretrained.* keys)" if backbone_only else ""
    kind = "metric" if model.is_metric else "relative"
    lines = [f"{ck.path}: checkpoint ({ck.layout} layout) does not fit the model{scope}: "
             f"{kind} Depth Anything V2, encoder {_model_encoder(model)}"]
    lines += [f"  hint: {h}" for h in _hints(ck, model, missing, unexpected, mismatched)]
    if mismatched:
        lines.append(f"  {len(mismatched)} keys with other shapes (checkpoint vs model):\n    {_show(mismatched)}")
    if missing:
        lines.append(f"  {len(missing)} keys the model needs are missing from the checkpoint:\n    {_show(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} keys in the checkpoint are not in the model:\n    {_show(unexpected)}")
    return CheckpointError("\n".join(lines))


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> DepthAnythingV2:
    inner = getattr(model, "module", model)  # DDP / DataParallel
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    if not isinstance(inner, DepthAnythingV2):
        raise TypeError(f"expected a DepthAnythingV2 model, found {type(model).__name__}")
    return inner


def load_weights(model: nn.Module, path: PathLike, *, strict: bool = True, backbone_only: bool = False) -> LoadReport:
    """Copy a checkpoint's weights into `model`, whatever its layout (see the module docstring).

    strict: every model key must be in the checkpoint with the same shape and the checkpoint may hold no other
        network key; otherwise CheckpointError lists missing / unexpected / mismatched keys with hints.
        strict=False loads what fits and reports the rest in the LoadReport (nothing fitting is still an error).
    backbone_only: take only `pretrained.*` keys (the metric recipe starts from a relative checkpoint's backbone
        with a fresh head); strictness then applies to the backbone keys; the checkpoint's head keys are skipped.
    """
    net = _unwrap(model)
    ck = read_checkpoint(path)
    target = net.state_dict()
    source = ck.state_dict
    skipped = list(ck.ignored)
    if backbone_only:
        skipped += [k for k in source if not k.startswith("pretrained.")]
        source = {k: v for k, v in source.items() if k.startswith("pretrained.")}
        target = {k: v for k, v in target.items() if k.startswith("pretrained.")}
    missing = sorted(set(target) - set(source), key=_natural)
    unexpected = sorted(set(source) - set(target), key=_natural)
    mismatched = [
        f"{k}: {list(source[k].shape)} vs {list(target[k].shape)}"
        for k in target if k in source and source[k].shape != target[k].shape
    ]
    if strict and (missing or unexpected or mismatched):
        raise _mismatch_error(ck, net, missing, unexpected, mismatched, backbone_only)
    usable = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
    if not usable:
        raise _mismatch_error(ck, net, missing, unexpected, mismatched, backbone_only)
    result = net.load_state_dict(usable, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # filtered above
    return LoadReport(
        path=ck.path,
        layout=ck.layout,
        loaded=len(usable),
        backbone_only=backbone_only,
        missing=missing,
        unexpected=unexpected,
        mismatched=[m.split(":")[0] for m in mismatched],
        skipped=skipped,
        spec=ck.spec,
    )


def save_released(model: nn.Module, path: PathLike) -> Path:
    """Write the model's weights in the released flat layout (loadable by the original code and by
    `load_weights`): `pretrained.*` + `depth_head.*`, vitg's FFN as `mlp.w12`/`mlp.w3`. Written atomically."""
    net = _unwrap(model)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(to_original_state_dict(sd), tmp)
    os.replace(tmp, out)
    return out
