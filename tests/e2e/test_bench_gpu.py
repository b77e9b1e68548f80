"""`unetdist bench --gpu`: the trainer's step measured per variant; here its reduced CPU form."""

from __future__ import annotations

import json

import pytest

from tests.util import cli


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench-gpu") / "gpu.json"
    r = cli("bench", "--gpu", "--quick", "--out", out, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"doc": json.loads(out.read_text()), "stdout": r.stdout}


@pytest.mark.slow
def test_quick_gpu_bench_runs_the_trainer_step_per_variant(quick):
    import torch

    doc = quick["doc"]
    assert doc["errors"] == {}
    assert set(doc["variants"]) == {"fp32", "bf16", "bf16_channels_last"}  # compile: too slow
    for r in doc["variants"].values():
        assert r["img_per_s_per_gpu"] > 0 and 0 <= r["data_wait"] < 1
        assert r["host_syncs_per_step"] == 1  # the agreement's read-back, counted
        assert r["grad_mb"] == pytest.approx(doc["variants"]["fp32"]["grad_mb"])
    if not torch.cuda.is_available():
        assert doc["profile"].startswith("cpu (reduced") and doc["peak_bf16_tflops"] is None
        assert all(r["mfu"] is None for r in doc["variants"].values())
    assert "not recorded" in quick["stdout"]  # --quick never writes RESULTS.md


def test_flop_count_is_the_seed_unets_957_gflop_at_512():
    from unetdist.bench import gpu as bench

    assert bench.flops_per_image(512, 64) / 1e9 == pytest.approx(957.4, abs=0.1)
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0


def test_record_appends_one_row_under_the_gpu_table(tmp_path):
    from unetdist.bench.gpu import HEADER, record

    doc = {"device": "NVIDIA H100 80GB HBM3", "settings": {"size": 512, "width": 64,
                                                           "batch": 16, "steps": 50},
           "errors": {"bf16_channels_last_compile": "boom"},
           "variants": {v: {"img_per_s_per_gpu": ips, "mfu": ips * 957.4e9 / 989e12,
                            "data_wait": 0.02, "host_syncs_per_step": 1}
                        for v, ips in (("fp32", 100.0), ("bf16", 300.0),
                                       ("bf16_channels_last", 400.0))}}
    path = tmp_path / "RESULTS.md"
    path.write_text("# Recorded results\n\nearlier text\n")
    record(doc, path)
    record(doc, path)
    text = path.read_text()
    assert text.count(HEADER) == 1 and text.startswith("# Recorded results\n\nearlier text")
    rows = [ln for ln in text.splitlines() if ln.startswith("| 20")]
    assert len(rows) == 2 and text.endswith(rows[-1] + "\n")
    assert "| 400.0 (39% MFU) | failed | 2.0% | 1 | n/a (1 device) |" in rows[0]
