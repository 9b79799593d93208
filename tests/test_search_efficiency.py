"""The search-efficiency benchmark's smoke mode runs end to end (two contenders, tiny budget), so it cannot rot."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_search_efficiency_benchmark_smoke(tmp_path):
    from benchmarks.search_efficiency import main

    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "search_efficiency.json").read_text())
    for name in ("ours", "random"):
        c = data["summary"]["contenders"][name]
        assert c["final_best_median"] is not None and c["final_best_median"] > 0
        curve = data["results"][name][0]["curve"]
        assert len(curve) == 4 and all(a is None or b <= a for a, b in zip(curve, curve[1:]) if b is not None)
    assert (tmp_path / "anytime.png").stat().st_size > 1000
