"""Sweep specs: grid/random expansion, validation by trial, trial arguments, the summary."""

from __future__ import annotations

import json

import pytest
import yaml

from unetdist.errors import ConfigError, UserError
from unetdist.tools import sweep


def _spec(tmp_path, **d) -> sweep.Spec:
    doc = {"out": str(tmp_path / "sw"), "overrides": ["model.width=8"],
           "parameters": {"optim.lr": [0.001, 0.003], "seed": [0, 1, 2]}, **d}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(doc))
    return sweep.read_spec(p)


def test_grid_is_every_combination_with_its_own_run_folder(tmp_path):
    doc = sweep.expand(_spec(tmp_path))
    trials = doc["trials"]
    assert [t["params"] for t in trials] == [{"optim.lr": lr, "seed": s}
                                             for lr in (0.001, 0.003) for s in (0, 1, 2)]
    assert len({t["run_dir"] for t in trials}) == 6
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text()) == doc
    args = sweep.trial_args(doc, 4)
    assert args[:1] == ["model.width=8"] and "optim.lr=0.003" in args and "seed=1" in args
    assert args[-1] == f"train.run_dir={tmp_path / 'sw' / 'trial-004'}"
    with pytest.raises(UserError, match="trials 0-5"):
        sweep.trial_args(doc, 6)


def test_random_draws_are_reproducible_and_inside_their_ranges(tmp_path):
    spec = _spec(tmp_path, method="random", count=20, seed=3,
                 parameters={"optim.lr": {"min": 1e-4, "max": 1e-2, "log": True},
                             "optim.weight_decay": [0.0, 0.01]})
    a, b = sweep.combinations(spec), sweep.combinations(spec)
    assert a == b and len(a) == 20
    assert all(1e-4 <= t["optim.lr"] <= 1e-2 and t["optim.weight_decay"] in (0.0, 0.01)
               for t in a)
    assert len({t["optim.lr"] for t in a}) == 20


@pytest.mark.parametrize("bad,match", [
    ({"method": "bayes"}, "method must be one of grid|random"),
    ({"parameters": {"lr": [1]}}, "dotted config key"),
    ({"parameters": {"optim.lr": {"min": 1, "max": 2}}}, "needs method random"),
    ({"group_by": "data.fold"}, "group_by 'data.fold' must be one of the parameters"),
    ({"colour": "red"}, "unknown key"),
])
def test_bad_specs_are_named(tmp_path, bad, match):
    with pytest.raises(ConfigError, match=match):
        _spec(tmp_path, **bad)


def test_a_trial_with_an_invalid_config_is_refused_before_anything_runs(tmp_path):
    spec = _spec(tmp_path, parameters={"optim.lr": [0.001, -1.0]})
    with pytest.raises(ConfigError, match=r"trial-001 \(optim.lr=-1\).*optim.lr must be > 0"):
        sweep.expand(spec)
    assert not (tmp_path / "sw" / "sweep.json").exists()


def test_another_sweep_in_the_same_folder_is_refused(tmp_path):
    sweep.expand(_spec(tmp_path))
    sweep.expand(_spec(tmp_path))  # the same: a re-run
    with pytest.raises(UserError, match="different sweep"):
        sweep.expand(_spec(tmp_path, parameters={"optim.lr": [0.1]}))


def test_summary_ranks_trials_and_picks_the_best_per_group(tmp_path):
    doc = sweep.expand(_spec(tmp_path, group_by="seed"))
    dice = [0.5, 0.7, None, 0.6, 0.4, 0.65]  # trial-002 never finished
    for t, d in zip(doc["trials"], dice):
        if d is not None:
            best = tmp_path / "sw" / t["name"] / "best"
            best.mkdir(parents=True)
            (best / "metrics.json").write_text(json.dumps({"step": 10, "dice": d}))
    text, best = sweep.summarize(tmp_path / "sw", doc)
    assert [r["trial"] for r in best] == ["trial-003", "trial-001", "trial-005"]  # seed 0,1,2
    lines = text.splitlines()
    assert "trial-001" in lines[2] and "0.7" in lines[2]  # ranked by dice
    assert "trial-002" in lines[7] and "not run" in lines[7]
    assert (tmp_path / "sw" / "best.txt").read_text().split() == [r["best"] for r in best]
    rows = (tmp_path / "sw" / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("trial,optim.lr,seed,dice,step,weights,status") and len(rows) == 7


def test_runs_started_by_a_wandb_agent_get_their_own_run_folder(monkeypatch):
    from unetdist.config import load_config

    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert load_config(None, []).train.run_dir == "runs/default"
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")
    monkeypatch.setenv("WANDB_RUN_ID", "run9")
    assert load_config(None, []).train.run_dir == "runs/default/sweep-sw1/run9"
    assert load_config(None, ["train.run_dir=x"]).train.run_dir == "x"


def test_summary_shows_per_trial_test_scores_and_an_ensemble_evaluation(tmp_path):
    doc = sweep.expand(_spec(tmp_path, parameters={"seed": [0, 1]}, group_by="seed"))
    for t, d in zip(doc["trials"], (0.6, 0.7)):
        run = tmp_path / "sw" / t["name"]
        (run / "best").mkdir(parents=True)
        (run / "best" / "metrics.json").write_text(json.dumps({"step": 4, "dice": d}))
        (run / "eval-test").mkdir()
        (run / "eval-test" / "metrics.json").write_text(json.dumps({"fov": {"dice": d - 0.1}}))
    ens = tmp_path / "sw" / "ensemble-test"
    ens.mkdir()
    (ens / "metrics.json").write_text(json.dumps({
        "info": {"ensemble": 2, "split": "test"}, "num_images": 3,
        "fov": {"dice": 0.6543, "auc_roc": 0.91}}))
    text, _ = sweep.summarize(tmp_path / "sw", doc)
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    first = [c.strip() for c in text.splitlines()[2].strip("|").split("|")]
    assert header[:5] == ["trial", "seed", "dice", "test dice", "step"]
    assert first[:5] == ["trial-001", "1", "0.7", "0.6", "4"]
    assert "ensemble-test: 2 model(s) on test (3 images): FOV dice 0.6543, AUC-ROC 0.9100" in text


@pytest.mark.parametrize("bad,key", [
    ({"count": "many", "method": "random"}, "count must be an integer, got 'many'"),
    ({"method": "random", "count": 2, "parameters": {"optim.lr": {"min": "low", "max": 1}}},
     "parameters.optim.lr.min must be a finite number, got 'low'"),
    ({"overrides": 5}, "overrides must be a list of key=value strings, got 5"),
    ({"out": [1, 2]}, "out must be a non-empty string, got [1, 2]"),
    ({"seed": [1]}, "seed must be an integer, got [1]"),
    ({"config": {"a": 1}}, "config must be a non-empty string"),
    ({"method": 3}, "method must be a non-empty string, got 3"),
    ({"metric": ["dice"]}, "metric must be a non-empty string"),
    ({"group_by": 1}, "group_by must be a non-empty string"),
    ({"parameters": {"optim.lr": 0.1}}, "parameters.optim.lr must be a non-empty list"),
    ({"parameters": {"optim.lr": [{"a": 1}]}}, "parameters.optim.lr: each value must be"),
    ({"parameters": {3: [1]}}, "parameter 3 must be a dotted config key"),
    ({"method": "random", "count": True}, "count must be an integer, got True"),
    ({"method": "random", "count": 2, "parameters": {"optim.lr": {"min": 1, "max": 2,
                                                                  "log": "yes"}}},
     "parameters.optim.lr.log must be true or false"),
    ({"method": "random", "count": 2, "parameters": {"optim.lr": {"min": 1, "max": ".inf"}}},
     "parameters.optim.lr.max must be a finite number"),
    ({"parameters": {f"a.k{i}": list(range(10)) for i in range(5)}}, "100000 trials"),
    ([1, 2], "must hold a mapping"),
])
def test_wrong_types_in_a_spec_are_one_line_naming_the_key(tmp_path, capsys, bad, key):
    """Issue 24 case 10: each of these was a ValueError/TypeError traceback."""
    from unetdist.cli import main

    doc = bad if isinstance(bad, list) else {
        "out": str(tmp_path / "sw"), "parameters": {"optim.lr": [0.001]}, **bad}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(doc).replace("'.inf'", ".inf"))
    assert main(["sweep", str(p), "--launch", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: sweep spec {p}: ") and key in err
    assert not (tmp_path / "sw").exists()  # refused before any trial was built


@pytest.mark.parametrize("text", ['{"trials": 5}', "[1]", "{", "[" * 100_000, '{"trials": [1]}',
                                  '{"trials": []}'])
def test_a_damaged_sweep_json_is_one_line(tmp_path, capsys, text):
    from unetdist.cli import main

    (tmp_path / "sweep.json").write_text(text)
    assert main(["sweep", str(tmp_path), "--summary"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'sweep.json'} is not a")
