"""Issue 18.6: torch threads fit the usable cores (affinity and cgroup), unless OMP_NUM_THREADS."""

from __future__ import annotations

import os

import pytest

from unetdist.bench.threads import thread_choices
from unetdist.train.threads import cgroup_cpu_limit, choose_threads, usable_cpus


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


@pytest.mark.parametrize("env, cuda, workers, usable, expected", [
    ({}, False, 0, 8, 8),
    ({}, False, 2, 8, 6),  # loader workers get cores of their own (bench section threads)
    ({}, False, 1, 2, 1),
    ({}, False, 6, 2, 1),
    ({"LOCAL_WORLD_SIZE": "2"}, False, 1, 8, 3),
    ({"LOCAL_WORLD_SIZE": "4"}, False, 0, 2, 1),
    ({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "4"}, False, 2, 2, 3),
    ({}, True, 2, 8, 1),
])
def test_policy(env, cuda, workers, usable, expected):
    assert choose_threads(cuda, workers, env, usable=usable)[0] == expected


def test_bench_choices_compare_with_and_without_cores_for_workers():
    assert thread_choices(2, 1) == {"usable cores": 2,
                                    "usable cores - loader workers": 1}
    assert thread_choices(8, 2) == {"usable cores": 8,
                                    "usable cores - loader workers": 6, "one thread": 1}
