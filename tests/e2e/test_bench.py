"""`unetdist bench --quick`: every section runs and the JSON holds what the table claims."""

from __future__ import annotations

import json
import math
import os

import pytest

from tests.util import cli


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "sub" / "bench.json"
    r = cli("bench", "--quick", "--out", out, timeout=420)  # evaluation trains ~1 min
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"doc": json.loads(out.read_text()), "stdout": r.stdout}


@pytest.mark.slow
@pytest.mark.dist
def test_quick_bench_writes_every_section(quick):
    import torch

    from unetdist.bench.runner import SECTIONS

    doc = quick["doc"]
    assert doc["format"] == 1 and doc["quick"] is True and doc["errors"] == {}
    assert set(doc["sections"]) == set(SECTIONS)
    m = doc["machine"]
    assert m["cpu_count"] == os.cpu_count() and m["torch"] == torch.__version__
    assert len(m["cuda_devices"]) == (torch.cuda.device_count() if torch.cuda.is_available()
                                      else 0)
    assert doc["ratios"] and all(math.isfinite(v) and v > 0 for v in doc["ratios"].values())
    assert set(doc["seconds"]) == set(SECTIONS) | {"total"}


@pytest.mark.slow
@pytest.mark.dist
def test_quick_bench_figures_are_consistent(quick):
    s = quick["doc"]["sections"]
    for w in s["data_wait"]["workers"].values():
        assert 0.0 <= w["wait_fraction"] <= 1.0
        assert w["wait_fraction"] == pytest.approx(w["wait_s"] / (w["wait_s"] + w["compute_s"]))
    st = s["staging"]
    for v in st["variants"].values():
        assert v["mb_s"] * v["seconds"] == pytest.approx(st["size_mb"], rel=0.01)
    assert st["ratio_vs_copytree"] == pytest.approx(
        st["variants"]["stage"]["mb_s"] / st["variants"]["copytree"]["mb_s"])
    assert {r["processes"] for r in s["ddp"]["results"]} == {1, 2}
    assert all(r["sec_per_image"] > 0 for r in s["inference"]["rows"])
    assert "skipped" in s["compile"]  # compiling is too slow for --quick


@pytest.mark.slow
@pytest.mark.dist
def test_quick_bench_prints_ratios_first(quick):
    out = quick["stdout"]
    assert out.index("ratios") < out.index("figures")
    for name in quick["doc"]["ratios"]:
        assert name in out


def test_every_section_module_imports_and_runs_alone():
    import importlib

    for name in ("pipeline", "models", "ddp", "staging", "inference", "threads", "gpu",
                 "evaluation"):
        mod = importlib.import_module(f"unetdist.bench.{name}")
        assert callable(mod.run_benchmark) and callable(mod.main), name
    train = importlib.import_module("unetdist.bench.train")
    assert all(callable(getattr(train, f"bench_{s}")) for s in ("train_step", "compile",
                                                                 "data_wait"))


def test_bench_rejects_unknown_sections(tmp_path):
    r = cli("bench", "--only", "nope", "--out", tmp_path / "x.json")
    assert r.returncode == 2 and "nope" in r.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
@pytest.mark.dist
def test_quick_evaluation_section_trains_times_both_windows_and_reports_the_goal(quick):
    """The evaluation section of the quick run: the recipe is trained, both windows score the
    same test image, and the headline keys are what the section's figures say."""
    doc = quick["doc"]
    s = doc["sections"]["evaluation"]
    tiled, whole = s["tiled"], s["whole"]
    assert (tiled["tile"], whole["tile"]) == (256, 0) and tiled["tta"] == whole["tta"] == "flip"
    assert s["meta"]["image"] == [292, 282] and s["meta"]["test_images"] == 1  # quick profile
    assert all(0.0 <= x["fov_dice"] <= 1.0 and x["sec_per_image"] > 0 for x in (tiled, whole))
    speedup = doc["ratios"]["evaluation: whole image vs tiled, s/image (flip TTA)"]
    assert speedup == pytest.approx(tiled["sec_per_image"] / whole["sec_per_image"])
    assert s["dice_difference"] == pytest.approx(abs(tiled["fov_dice"] - whole["fov_dice"]))
    assert s["goal_met"] == (speedup >= 2.0 and s["dice_difference"] <= 0.001)
    assert doc["figures"]["evaluation s/image, whole, flip TTA"] == whole["sec_per_image"]
    assert "evaluation: whole image vs tiled" in quick["stdout"]


def test_each_section_builds_its_accelerator_with_its_own_precision(monkeypatch):
    """accelerate fixes a process's precision with its first Accelerator: on a CPU with native
    bf16 the threads section (the CPU recipe, `auto` = bf16) followed an fp32 section and failed."""
    from unetdist.bench import runner
    from unetdist.distributed import make_accelerator

    def section(precision):
        return lambda quick: {"precision": make_accelerator(precision).mixed_precision}

    monkeypatch.setattr(runner, "RUNNERS", {"a": section("no"), "b": section("bf16")})
    doc = runner.run_all(quick=True, only=("a", "b"), log=lambda line: None)
    assert doc["errors"] == {}
    assert doc["sections"] == {"a": {"precision": "no"}, "b": {"precision": "bf16"}}
