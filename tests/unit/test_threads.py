"""Issues 18.6 and 23.5: torch threads fit the usable cores (affinity and cgroup) and follow what
the loader workers and other programs really use, unless OMP_NUM_THREADS or a GPU fixes them."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import torch

from unetdist.bench.threads import old_threads
from unetdist.train import threads
from unetdist.train.threads import (
    SPARE,
    CpuSample,
    ThreadChoice,
    ThreadTuner,
    cgroup_cpu_limit,
    choose_threads,
    loads_between,
    sample_cpu,
    tuned_threads,
    usable_cpus,
)


def test_cgroup_v2_and_v1_quotas(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None


def test_usable_cpus_is_capped_by_the_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: still one thread
    assert usable_cpus(tmp_path) == 1


@pytest.mark.parametrize("env, cuda, workers, usable, cpus, threads, share, see_others", [
    ({}, False, 2, 2, 2, 2, 2, True),  # the CPU recipe's box: every core until measured
    ({}, False, 0, 8, 8, 8, 8, True),
    ({}, False, 2, 2, 8, 2, 2, False),  # a quota of 2 of 8 cores: the 8's load is not ours
    ({"LOCAL_WORLD_SIZE": "2"}, False, 1, 8, 8, 4, 4, False),  # sibling ranks look like load
    ({"LOCAL_WORLD_SIZE": "4"}, False, 0, 2, 2, 1, 1, False),
    ({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "4"}, False, 2, 2, 2, 3, None, False),
    ({}, True, 2, 8, 8, 1, None, False),
])
def test_start_up_choice(env, cuda, workers, usable, cpus, threads, share, see_others):
    c = choose_threads(cuda, workers, env, usable=usable, cpus=cpus)
    assert (c.threads, c.share, c.see_others) == (threads, share, see_others)


@pytest.mark.parametrize("share, helpers, others, expected", [
    (2, 0.01, 0.02, 2),  # cached data: the workers idle, the box is quiet -> every core
    (2, 0.01, None, 2),
    (2, 0.30, 0.05, 2),  # 0.35 core of other work: still worth a second thread
    (2, 0.30, 0.20, 1),  # past SPARE: one core is theirs
    (2, 1.90, None, 1),  # at least one thread
    (2, 0.05, 9.00, 1),  # a loaded box: other programs keep every core busy
    (8, 2.00, 0.00, 6),  # two busy decoding workers take two cores
    (8, 2.50, 0.00, 5),
    (1, 0.00, 0.00, 1),
])
def test_tuned_threads(share, helpers, others, expected):
    n, why = tuned_threads(share, helpers, others)
    assert n == expected
    assert (f"keeps all {share}" if n == share else f"keeps {n} of {share}") in why
    assert f"{helpers:.2f}" in why and (others is None or f"{others:.2f}" in why)


def test_spare_is_where_a_second_thread_stops_paying():
    # two threads that each keep 1 - SPARE of a core, at 1.8x two-thread scaling, beat one
    assert 2 * (1 - SPARE) * 0.9 > 1 > 2 * (1 - SPARE - 0.1) * 0.9


def test_old_policy_for_the_bench():
    assert old_threads(2, 2) == 1 and old_threads(8, 2) == 6 and old_threads(2, 0) == 2


def test_loads_between_counts_helpers_and_other_programs():
    a = CpuSample(wall=10.0, own=5.0, helpers={11: 1.0, 12: 2.0}, node=20.0)
    b = CpuSample(wall=14.0, own=9.0, helpers={11: 1.4, 13: 0.4}, node=30.0)
    helpers, others = loads_between(a, b)
    # 11 used 0.4 s, 12 exited (dropped), 13 is new (all 0.4 s counted): 0.8 s over 4 s
    assert helpers == pytest.approx(0.2)
    # 10 busy core-seconds on our cores, 4 ours, 0.8 our helpers': 5.2 s over 4 s
    assert others == pytest.approx(1.3)
    assert loads_between(a, CpuSample(14.0, 9.0, {}, None)) == (0.0, None)
    assert loads_between(a, CpuSample(14.0, 40.0, {}, 30.0))[1] == 0.0  # never negative


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    time.sleep(30)  # stay alive until the test ends it


def test_sample_cpu_sees_a_forkserver_worker():
    """Loader workers started through a forkserver are grandchildren: they must still count."""
    ctx = multiprocessing.get_context("forkserver")
    p = ctx.Process(target=_spin, args=(0.3,), daemon=True)
    p.start()
    try:
        deadline, s = time.monotonic() + 60, sample_cpu(None)
        while s.helpers.get(p.pid, 0.0) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.2)
            s = sample_cpu(None)
        assert s.helpers.get(p.pid, 0.0) >= 0.25
        assert s.node is None
        assert sample_cpu(sorted(os.sched_getaffinity(0))).node > 0
    finally:
        # SIGKILL, not SIGTERM: a forkserver started earlier in this process (an in-process
        # training's loader) keeps the SIGTERM disposition it was started with; started while
        # SIGTERM was ignored (after a preemption), its children ignore terminate() and the
        # join waited out the 30 s sleep
        p.kill()
        p.join()


def test_tuner_decides_once_after_the_window(monkeypatch):
    samples = iter([CpuSample(0.0, 0.0, {7: 0.0}, 0.0), CpuSample(10.0, 19.0, {7: 0.5}, 20.0)])
    monkeypatch.setattr(threads, "sample_cpu", lambda cpus: next(samples))
    lines: list[str] = []
    tuner = ThreadTuner(ThreadChoice(2, "test", share=2, see_others=True), [0, 1],
                        lines.append, start=2, steps=3, seconds=0.0)
    before = torch.get_num_threads()
    try:
        hook_calls = []
        step = tuner.chain(lambda: hook_calls.append(1))
        for _ in range(4):
            step()
            assert not tuner.done
        step()  # call 5 = start + steps: decides from the two samples
        assert tuner.done and tuner.loads == (pytest.approx(0.05), pytest.approx(0.05))
        assert tuner.threads == 2 == torch.get_num_threads()
        for _ in range(10):
            step()  # never samples again (the iterator would raise)
        assert len(hook_calls) == 15 and len(lines) == 1
        assert lines[0].startswith("torch threads per process: 2 (loader workers (child "
                                   "processes) used 0.05")
    finally:
        torch.set_num_threads(before)


def test_fixed_choice_is_never_retuned():
    def hook() -> None:
        pass

    tuner = ThreadTuner(ThreadChoice(3, "OMP_NUM_THREADS"))
    assert tuner.done and tuner.chain(hook) is hook


def test_a_resumed_run_computes_with_the_thread_count_its_run_settled_on():
    """The tuner is a checkpoint part: another count after a resume would not be bitwise."""
    before = torch.get_num_threads()
    choice = ThreadChoice(2, "test", share=2)
    try:
        original = ThreadTuner(choice, report=lambda line: None)
        original.decide((1.6, None))  # busy workers: torch keeps 1 of 2
        saved = original.state_dict()
        assert saved == {"threads": 1, "settled": True}

        torch.set_num_threads(2)  # what a fresh process starts with
        lines: list[str] = []
        resumed = ThreadTuner(choice, report=lines.append)
        resumed.load_state_dict(saved)
        assert resumed.done and resumed.threads == 1 == torch.get_num_threads()
        assert "before this resume" in lines[0]

        def hook() -> None:
            pass

        assert resumed.chain(hook) is hook  # never re-measured

        unsettled = ThreadTuner(choice, report=lines.append)
        unsettled.load_state_dict({"threads": 1, "settled": False})  # saved inside the window
        unsettled.load_state_dict({})  # a checkpoint from before the tuner was a part
        assert not unsettled.done and unsettled.threads == 2
    finally:
        torch.set_num_threads(before)
