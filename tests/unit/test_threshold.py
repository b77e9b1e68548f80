"""eval.threshold=auto: the F1-optimal threshold from the score histograms, metrics there, and
where the chosen threshold is stored and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.eval_helpers import make_best_dir, random_sample, tiny_config, tiny_model


def _hists(prob: np.ndarray, label: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.clip((prob * bins).astype(np.int64), 0, bins - 1)
    return (np.bincount(idx[label], minlength=bins), np.bincount(idx[~label], minlength=bins))


def test_f1_optimal_threshold_matches_a_brute_force_sklearn_sweep():
    from sklearn.metrics import f1_score

    from unetdist.eval.metrics import f1_optimal_threshold

    rng = np.random.default_rng(3)
    bins = 100
    label = rng.random(4000) < 0.15
    # an under-confident model: vessel scores centred near 0.35, so 0.5 is far from optimal
    prob = np.clip(np.where(label, rng.normal(0.38, 0.1, label.size),
                            rng.normal(0.15, 0.1, label.size)), 0, 1 - 1e-9)
    idx = np.clip((prob * bins).astype(np.int64), 0, bins - 1)
    t, f1 = f1_optimal_threshold(*_hists(prob, label, bins))
    # brute force: predicted vessel = bin >= k, every edge k/bins
    sweep = {k / bins: f1_score(label, idx >= k) for k in range(1, bins)}
    best = max(sweep.values())
    assert f1 == pytest.approx(best, abs=1e-12)
    assert sweep[t] == pytest.approx(best, abs=1e-12)
    assert abs(t - 0.5) > 0.1  # the crafted case: the best threshold is not 0.5
    assert f1 > f1_score(label, prob >= 0.5) + 0.05


def test_f1_optimal_threshold_without_vessels_is_none_and_ties_go_to_the_middle():
    from unetdist.eval.metrics import f1_optimal_threshold

    assert f1_optimal_threshold(np.zeros(10, np.int64), np.ones(10, np.int64)) is None
    # perfectly separated in bins 2 and 8: every edge 3..8 gives F1 1; the one nearest 0.5 wins
    pos, neg = np.zeros(10, np.int64), np.zeros(10, np.int64)
    pos[8], neg[2] = 5, 5
    assert f1_optimal_threshold(pos, neg) == (0.5, 1.0)


def test_metrics_at_a_threshold_equal_a_direct_count():
    from unetdist.eval.metrics import MetricState

    rng = np.random.default_rng(0)
    state = MetricState(bins=1000, threshold=0.5)
    probs, labels, fovs = [], [], []
    for _ in range(3):
        p = rng.random((20, 30)).astype(np.float32)
        lab = rng.random((20, 30)) < 0.3
        fov = rng.random((20, 30)) < 0.8
        state.update(torch.from_numpy(p), torch.from_numpy(lab.astype(np.float32)),
                     torch.from_numpy(fov.astype(np.float32)))
        probs.append(p * fov)  # as evaluate_split scores: zero outside the FOV
        labels.append(lab)
        fovs.append(fov)
    at = state.reduce().at_threshold(0.3004)  # rounded to the edge 0.3
    assert at["threshold"] == 0.3
    p, lab, fov = (np.concatenate([a.ravel() for a in x]) for x in (probs, labels, fovs))
    # the histogram counts a score as in bin floor(p * bins): the direct count uses that too
    pred = np.floor(p.astype(np.float32) * np.float32(1000)) >= 300
    tp, fp = int((pred & lab & fov).sum()), int((pred & ~lab & fov).sum())
    fn, tn = int((~pred & lab & fov).sum()), int((~pred & ~lab & fov).sum())
    assert at["fov"]["counts"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def test_config_accepts_auto_and_numbers_only():
    from unetdist.config import load_config
    from unetdist.errors import ConfigError

    assert load_config(None, ["eval.threshold=auto"]).eval.threshold == "auto"
    assert load_config(None, ["eval.threshold=0.3"]).eval.threshold == 0.3
    for bad in ("eval.threshold=1", "eval.threshold=maybe"):
        with pytest.raises(ConfigError, match="eval.threshold must be in"):
            load_config(None, [bad])


def test_stored_threshold_from_metadata_then_metrics_json(tmp_path):
    from unetdist.eval.threshold import chosen_threshold, stored_threshold, threshold_of

    best = make_best_dir(tmp_path / "best")
    assert threshold_of(best) is None
    (best / "metrics.json").write_text(json.dumps({"step": 7, "threshold": 0.3}))
    assert threshold_of(best) == 0.3 and threshold_of(tmp_path) == 0.3  # the run folder
    assert stored_threshold(best / "model.safetensors", {"threshold": "0.25"}) == 0.25
    auto, fixed = tiny_config("eval.threshold=auto").eval, tiny_config("eval.threshold=0.4").eval
    assert chosen_threshold(auto, 0.3) == 0.3 and chosen_threshold(auto, None) == 0.5
    assert chosen_threshold(fixed, 0.3) == 0.4  # a number given by the user wins


def test_training_stores_the_f1_threshold_with_best(tmp_path):
    """validate()'s entry for best/metrics.json, and export_best putting it in the metadata
    (so an exported single file carries it)."""
    from unetdist.config import to_dict, to_yaml
    from unetdist.eval.threshold import threshold_of
    from unetdist.train.checkpoint import export_best
    from unetdist.train.validation import chosen_threshold_entry

    metrics = {"dice": 0.7, "f1_threshold": {"threshold": 0.31, "dice": 0.74}}
    assert chosen_threshold_entry(tiny_config().eval, metrics) == {}
    auto = tiny_config("eval.threshold=auto")
    entry = chosen_threshold_entry(auto.eval, metrics)
    assert entry == {"threshold": 0.31, "threshold_dice": 0.74}
    best = export_best(tiny_model(auto).state_dict(), to_dict(auto), to_yaml(auto),
                       {**metrics, **entry}, 5, tmp_path)
    assert json.loads((best / "metrics.json").read_text())["threshold"] == 0.31
    (best / "metrics.json").unlink()  # the weights file alone still knows it
    assert threshold_of(best / "model.safetensors") == 0.31


def test_evaluate_reports_both_thresholds(tmp_path):
    from unetdist.eval.evaluate import evaluate_split, summary_line
    from unetdist.eval.inference import sliding_window_predict
    from unetdist.eval.metrics import MetricState

    cfg = tiny_config("eval.threshold=auto")
    model = tiny_model(cfg, seed=1)
    samples = [random_sample(f"k{i}", 40, 50, seed=i) for i in range(2)]
    probs = [sliding_window_predict(model, s["image"], cfg.eval) * s["fov"] for s in samples]
    # a chosen threshold (a bin edge) inside this untrained model's range of scores
    inside = torch.cat([p[s["fov"] > 0] for p, s in zip(probs, samples)])
    chosen = round(float(inside.median()) * cfg.eval.auc_bins) / cfg.eval.auc_bins
    res = evaluate_split(model, samples, cfg.eval, chosen=chosen, out_dir=tmp_path / "ev",
                         progress=False)
    ref = MetricState(cfg.eval.auc_bins, chosen)
    for p, s in zip(probs, samples):
        ref.update(p, s["label"], s["fov"])
    assert res["at_threshold"]["threshold"] == chosen
    assert res["at_threshold"]["fov"]["counts"] == ref.compute()["fov"]["counts"]
    assert res["at_threshold"]["fov"]["counts"] != res["fov"]["counts"]  # the 0.5 block
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["at_threshold"]["threshold"] == chosen and doc["settings"]["threshold"] == "auto"
    assert doc["fov"] == json.loads(json.dumps(res["fov"]))
    line = summary_line(res)
    assert f"FOV dice {res['fov']['dice']:.4f}" in line
    assert f"at the chosen threshold {chosen:.4g}: FOV dice {res['at_threshold']['fov']['dice']:.4f}" \
        in line
