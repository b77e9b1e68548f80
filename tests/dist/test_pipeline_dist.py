"""The pipelines under `accelerate launch --multi_gpu --num_processes 2` on CPU (one launch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.util import launch

pytestmark = [pytest.mark.dist, pytest.mark.slow]
WORKER = Path(__file__).with_name("pipeline_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from unetdist.data.manifest import read_manifest
    from unetdist.data.ingest.writer import shard_dataset
    from unetdist.data.ingest.synth import write_synthetic

    root = tmp_path_factory.mktemp("pipedist")
    dirs = []
    for n_train, n_test in ((6, 5), (1, 3), (1, 1)):
        raw = write_synthetic(root / f"raw{n_test}", n_train=n_train, n_test=n_test,
                              size=(64, 72), seed=n_test, progress=False)
        dirs.append(root / f"shards{n_test}")
        shard_dataset(raw, dirs[-1], layout="drive", split_val=0.0, progress=False)
    assert len(read_manifest(dirs[0])["splits"]["train"]["shards"]) == 1  # 1 shard, 2x2 streams
    out = root / "out"
    out.mkdir()
    r = launch([str(WORKER), str(out), *map(str, dirs)], timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    return {"dirs": [str(d) for d in dirs], "ranks": ranks}


def test_eval_shares_cover_each_sample_once(runs):
    for d, n in zip(runs["dirs"], (5, 3, 1)):
        shares = [r["eval"][d] for r in runs["ranks"]]
        flat = shares[0] + shares[1]
        assert len(flat) == n and flat == sorted(set(flat))  # all, once, in key order
        assert [len(s) for s in shares] == [n // 2, n - n // 2]  # rank 0 gets none when n=1


def test_each_rank_gets_the_configured_nonempty_batches_and_they_differ(runs):
    ranks = runs["ranks"]
    assert all(r["world"] == 2 for r in ranks)
    for r in ranks:
        assert len(r["train"]) == 5
        for b in r["train"]:
            assert b["shape"] == [2, 1, 32, 32] and len(b["key"]) == 2 and b["fov_sum"] > 0
    digests = [[b["digest"] for b in r["train"]] for r in ranks]
    assert not set(digests[0]) & set(digests[1])


def test_resumed_stream_equals_the_rest_of_the_uninterrupted_one(runs):
    for r in runs["ranks"]:
        assert r["resumed"] == r["train"][2:]
