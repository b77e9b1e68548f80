"""Small frictions a first real run met (issue 23): the CPU recipe on its 2-core box, metrics
logged on a clock as well as every log_every steps, the report's throughput counts."""

from __future__ import annotations

from unetdist.config import load_config


class _Acc:
    local_process_index = 0


def test_the_cpu_recipe_fits_the_2_core_box_it_is_written_for(monkeypatch, capsys):
    """Cached data: the recipe's 2 workers only crop and augment and share one core."""
    from unetdist.train import setup

    monkeypatch.setattr(setup, "usable_cpus", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    recipe = load_config("configs/drive_cpu.yaml", [])
    assert recipe.data.num_workers == 2 and recipe.data.cache
    assert setup.warn_cpu_shortage(recipe, _Acc()) is None
    uncached = load_config("configs/drive_cpu.yaml", ["data.cache=false"])
    assert "= 3: request more cores" in setup.warn_cpu_shortage(uncached, _Acc())
    assert capsys.readouterr().err.count("warning: 2 usable CPU(s)") == 1


def _log_89_slow_steps() -> list[tuple[int, dict]]:
    """89 steps of 2 s (a 3-minute CPU run) through log_step with log_every 50."""
    from types import SimpleNamespace

    from unetdist.train.loop import log_step
    from unetdist.train.step import StepStats

    logged: list[tuple[int, dict]] = []
    cfg = load_config(None, ["train.log_every=50", "train.log_seconds=30", "train.max_steps=89"])
    state = SimpleNamespace(step=0, batches=0)
    budget = SimpleNamespace(spent_s=0.0, done=lambda step: step >= 89)
    run = SimpleNamespace(cfg=cfg, budget=budget, state=state, tracker=SimpleNamespace(
        log=lambda record, step: logged.append((step, {"step": step, "split": "train",
                                                       **record}))))
    bar, window = SimpleNamespace(set_postfix=lambda **kw: None, update=lambda n: None), []
    for _ in range(89):
        state.step += 1
        state.batches += 1
        budget.spent_s += 2.0
        log_step(run, StepStats(loss=0.5, grad_norm=1.0, lr=1e-3, images=8, seconds=2.0,
                                preempt=False, clock_due=False, nonfinite=False), window, bar)
    return logged


def test_a_slow_run_logs_every_log_seconds_as_well_as_every_log_every_steps():
    """One point per 30 s of steps, not only steps 50 and 89: the report's curves get a shape."""
    logged = _log_89_slow_steps()
    assert [step for step, _ in logged] == [15, 30, 45, 50, 65, 80, 89]
    assert logged[-1][1]["train_s"] == 178.0


def test_the_report_counts_every_step_and_the_whole_training_time():
    """The run's 89 steps in 178 s, not the 39 steps between its first and last records."""
    from unetdist.track.report import _throughput

    records = [r for _, r in _log_89_slow_steps()]
    text = _throughput(records)
    assert "<p>89 steps in 3.0 min of training time (0.50 steps/s; validation" in text
    old = [{k: v for k, v in r.items() if k != "train_s"} | {"time": 1000.0 + 2 * r["step"]}
           for r in records]  # a run logged before train_s: say what the span really is
    assert ("<p>74 steps between the first and last logged train records (steps 15-89) in "
            "2.5 min of wall time (0.50 steps/s).</p>") in _throughput(old)
