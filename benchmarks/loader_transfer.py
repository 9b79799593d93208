"""Host cost of moving batches from DataLoader workers to the training process, by collate function.

The items are ready-made tensors shaped like the trainer's (a 3xHxW float image, an HxW float depth map and a bool
mask, an int index, a path and an empty skip list), so nothing is decoded: the number measured is how fast the
workers' batches reach the main process. Two collates run in alternation, `--repeats` times each:

- `trainer`: `trainer.data.datasets.collate_depth_batch` (stacks with torch's `default_collate`, which in a worker
  writes the batch straight into shared memory);
- `stack`: the same with plain `torch.stack` (the batch is copied into shared memory again when it is sent).

    python benchmarks/loader_transfer.py                      # 518x518, batch 4, 2 workers
    python benchmarks/loader_transfer.py --size 64x80 --batches 20 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.data.datasets import collate_depth_batch  # noqa: E402


class ReadyItems(Dataset):
    """Items shaped like the trainer's dataset items, made without decoding anything."""

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, i: int) -> dict[str, Any]:
        h, w = self.size
        return {"image": torch.zeros(3, h, w), "depth": torch.zeros(h, w), "valid": torch.zeros(h, w, dtype=torch.bool),
                "path": f"{i}.jpg", "index": i, "skipped": []}


def stack_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """`collate_depth_batch` with plain torch.stack (the collate before default_collate)."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if all(isinstance(v, torch.Tensor) for v in values):
            out[key] = torch.stack(values)
        elif all(isinstance(v, int) for v in values):
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = values
    return out


def batches_per_second(collate: Callable, size: tuple[int, int], batch: int, workers: int, batches: int) -> float:
    """Batches/s received by this process after a warm-up of 20 batches."""
    loader = DataLoader(ReadyItems(size), batch_size=batch, num_workers=workers, collate_fn=collate,
                        persistent_workers=True, prefetch_factor=4)
    it = iter(loader)
    for _ in range(20):
        next(it)
    started = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - started)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="518x518", help="HxW of the items (the trainer's crop)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=300, help="timed batches per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each collate, alternating")
    ap.add_argument("--out", help="JSON file")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    runs: dict[str, list[float]] = {"trainer": [], "stack": []}
    for _ in range(args.repeats):
        for name, fn in (("stack", stack_collate), ("trainer", collate_depth_batch)):
            runs[name].append(batches_per_second(fn, size, args.batch, args.workers, args.batches))
            print(f"{name:8s} {runs[name][-1]:7.1f} batches/s", flush=True)
    result = {"benchmark": "loader_transfer", "size": args.size, "batch": args.batch, "workers": args.workers,
              "batches_per_run": args.batches, "batches_per_s": runs,
              "median": {k: statistics.median(v) for k, v in runs.items()}}
    print(json.dumps(result["median"]))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
