"""log.py's progress in log files: full lines, a rate that stays readable below 1 per second."""

from __future__ import annotations

import pytest

from unetdist import log


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("seconds, want", [(2.5, "(2.5 s/step)"), (0.25, "(4.0 step/s)"),
                                           (1.0, "(1.0 step/s)")])
def test_line_progress_shows_seconds_per_step_below_one_per_second(monkeypatch, capsys,
                                                                   seconds, want):
    clock = _Clock()
    monkeypatch.setattr(log.time, "monotonic", clock)
    bar = log.LineProgress(100, "train", "step", 0, every_s=3600)
    for _ in range(4):
        clock.t += seconds
        bar.update(1)
    bar.close()
    assert capsys.readouterr().err == f"train: 4/100 step {want}\n"


def test_progress_is_full_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(log.sys.stderr, "isatty", lambda: False, raising=False)
    items = list(log.progress_iter(range(5), 5, desc="verifying", unit="shard"))
    err = capsys.readouterr().err
    assert items == [0, 1, 2, 3, 4]
    assert err.startswith("verifying: 5/5 shard (") and err.endswith(")\n")
    assert "\r" not in err and err.count("\n") == 1


def test_progress_is_silent_when_disabled(capsys):
    assert list(log.progress_iter("ab", 2, desc="x", enabled=False)) == ["a", "b"]
    assert capsys.readouterr().err == ""


def _ddp_style_warnings() -> list[str]:
    """The warnings one rank shows: DDP's deprecation (as accelerate triggers it) and a
    warning about this rank's own data, which every rank must still show."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        log.one_warning_per_job()
        warnings.warn_explicit("`broadcast_buffers` is deprecated. Use `forward_sync_buffers`",
                               FutureWarning, "accelerate/accelerator.py", 1,
                               module="accelerate.accelerator")
        warnings.warn_explicit("torch says so", UserWarning, "torch/x.py", 1, module="torch.x")
        warnings.warn_explicit("odd pixels in shard 3", UserWarning, "x.py", 1,
                               module="unetdist.data.reader")
    return [str(w.message) for w in seen]


@pytest.mark.parametrize("rank, shown", [
    ("0", ["`broadcast_buffers` is deprecated. Use `forward_sync_buffers`", "torch says so",
           "odd pixels in shard 3"]),
    ("1", ["odd pixels in shard 3"])])
def test_each_code_warning_is_shown_by_rank_0_only(monkeypatch, rank, shown):
    monkeypatch.setenv("RANK", rank)
    assert _ddp_style_warnings() == shown
