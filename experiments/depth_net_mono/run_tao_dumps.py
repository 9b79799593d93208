"""TAO's spec dumps run unchanged, end to end, on this machine's device (a GPU when there is one).

    PYTHONPATH=. python experiments/depth_net_mono/run_tao_dumps.py WORK_DIR [--encoder vitl|custom]

In WORK_DIR: synthetic NYU-style scenes, TAO's `convert` on them, a raw DINOv2 backbone file (random weights in
Meta's key layout, standing in for `dinov2_vitl14_pretrain.pth`), then the dumps of tests/data/tao with only their
data and checkpoint paths replaced: train (1 epoch) -> evaluate -> inference -> export. Each step's result or error
goes to WORK_DIR/tao_dumps_run.json. `--encoder custom` (a tiny ViT, the only key changed) suits a CPU.
"""
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
work = Path(sys.argv[1]).resolve()
ENCODER = sys.argv[sys.argv.index("--encoder") + 1] if "--encoder" in sys.argv else "vitl"
work.mkdir(parents=True, exist_ok=True)
OUT = work
os.chdir(work)  # relative paths, as a user in their project folder
log = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "encoder": ENCODER}


def step(name, fn):
    t = time.time()
    try:
        log[name] = {"result": fn(), "seconds": round(time.time() - t, 1)}
    except BaseException as exc:  # noqa: BLE001 - recorded for the report
        log[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    (OUT / "tao_dumps_run.json").write_text(json.dumps(log, indent=1, default=str))
    print(name, json.dumps(log[name], default=str)[:1500], flush=True)


def spec_file(name, repl):
    text = (REPO / "tests" / "data" / "tao" / name).read_text()
    for a, b in repl:
        text = text.replace(a, b)
    Path(name).write_text(text)
    return name


def prepare():
    from trainer.data.synth import generate_dataset
    from trainer.data.convert import convert
    generate_dataset("data", 16, size=(240, 320), seed=0, progress=False, scenes=2)
    res = convert({"data_root": "data", "results_dir": "splits", "image_dir_pattern": ["rgb_"],
                   "depth_dir_pattern": ["sync_depth_"], "split_ratio": 0.75}, log=print)
    from trainer.config import build_spec
    from trainer.model import build_model
    m = build_model(build_spec({"model": {"encoder": ENCODER, "model_type": "RelativeDepthAnything"}},
                               check_files=False, notice=lambda _m: None))
    torch.save({k[len("pretrained."):]: v for k, v in m.state_dict().items() if k.startswith("pretrained.")},
               "dinov2_vitl14_pretrain.pth")
    return res.counts


def train():
    from trainer.config import load_spec
    from trainer.fit import fit
    from trainer.tracking import TrackingConfig
    name = spec_file("train_dump.yaml", [("/data/train.txt", "splits/train.txt"), ("/data/val.txt", "splits/val.txt"),
                                         ("/models/dinov2_vitl14_pretrain.pth", "dinov2_vitl14_pretrain.pth"),
                                         ("/results/relative_depth_anything", "results")])
    spec = load_spec(name, ["train.num_epochs=1", f"model.encoder={ENCODER}"], action="train")
    r = fit(spec, tracking=TrackingConfig(enabled=False), progress=False)
    return {"fit": str(r)[:600], "precision": spec.train.precision,
            "crop": list(spec.dataset.train_dataset.augmentation.crop_size)}


REPL_EVAL = [("/data/test.txt", "splits/val.txt"),
             ("/results/metric_depth_anything/train/dn_model_latest.pth", "results/checkpoints/best.ckpt"),
             ("/results/metric_depth_anything", "results")]


def evaluate():
    from trainer.config import load_spec
    from trainer.evaluate import evaluate as ev
    return ev(load_spec(spec_file("evaluate_dump.yaml", REPL_EVAL), action="evaluate"), progress=False)


def inference():
    from trainer.config import load_spec
    from trainer.infer import inference as inf
    return str(inf(load_spec(spec_file("inference_dump.yaml", REPL_EVAL), action="inference")))[:400]


def export():
    from trainer.config import load_spec
    from trainer.deploy.onnx import export_onnx
    return export_onnx(load_spec(spec_file("export_dump.yaml", REPL_EVAL), action="export"), progress=False).summary()


step("prepare", prepare)
step("train", train)
step("evaluate", evaluate)
step("inference", inference)
step("export", export)
