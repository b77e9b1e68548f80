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


def test_a_slow_run_logs_every_log_seconds_as_well_as_every_log_every_steps():
    """89 steps of 2 s (a 3-minute CPU run) with log_every 50: one point per 30 s of steps,
    not only steps 50 and 89, so the report's curves have a shape."""
    from types import SimpleNamespace

    from unetdist.train.loop import log_step
    from unetdist.train.step import StepStats

    logged: list[int] = []
    cfg = load_config(None, ["train.log_every=50", "train.log_seconds=30", "train.max_steps=89"])
    run = SimpleNamespace(cfg=cfg, budget=None, state=SimpleNamespace(step=0, batches=0),
                          tracker=SimpleNamespace(log=lambda record, step: logged.append(step)))
    bar, window = SimpleNamespace(set_postfix=lambda **kw: None, update=lambda n: None), []
    for _ in range(89):
        run.state.step += 1
        run.state.batches += 1
        log_step(run, StepStats(loss=0.5, grad_norm=1.0, lr=1e-3, images=8, seconds=2.0,
                                preempt=False, clock_due=False, nonfinite=False), window, bar)
    assert logged == [15, 30, 45, 50, 65, 80, 89]
