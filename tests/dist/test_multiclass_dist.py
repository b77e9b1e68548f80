"""Multi-class metrics under `accelerate launch` with 2 processes: each rank scores a disjoint
share of the images, one all-reduce, and the result equals one process scoring them all (each
image counted once, ignore pixels excluded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.dist.multiclass_worker import IGNORE, SETS, make_images, result, score
from tests.util import REPO, launch, subprocess_env

pytestmark = [pytest.mark.dist, pytest.mark.slow]
WORKER = Path(__file__).with_name("multiclass_worker.py")


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mcdist")
    # a script's sys.path starts at its folder: point it at this tree's unetdist
    r = launch([str(WORKER), str(out)], env=subprocess_env(PYTHONPATH=str(REPO)), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", list(SETS))
def test_two_ranks_equal_one_process_on_all_images(ranks_out, name):
    two = json.loads((ranks_out / f"{name}.json").read_text())
    images = make_images(*SETS[name])
    one = json.loads(json.dumps(result(score(images))))  # one process, every image
    assert two["world"] == 2
    assert two["classes"]["num_images"] == len(images) == two["labels"]["num_images"]
    # each scored pixel exactly once: inside the FOV, not an ignore pixel
    pixels = sum(int((fov & (lab != IGNORE)).sum()) for _, lab, fov, _ in images)
    assert two["classes"]["pixels"] == pixels
    assert sum(map(sum, two["classes"]["confusion"])) == pixels
    assert two["labels"]["per_label"]["artery"]["counts"] == \
        one["labels"]["per_label"]["artery"]["counts"]
    assert {k: v for k, v in two.items() if k != "world"} == one


def test_the_confusion_is_that_of_the_pooled_pixels(ranks_out):
    two = json.loads((ranks_out / "five.json").read_text())
    conf = np.zeros((4, 4), np.int64)
    for prob, lab, fov, _ in make_images(*SETS["five"]):
        keep = fov & (lab != IGNORE)
        np.add.at(conf, (lab[keep], prob.argmax(0)[keep]), 1)
    assert two["classes"]["confusion"] == conf.tolist()
