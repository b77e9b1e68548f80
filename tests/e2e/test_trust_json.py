"""Issue 24 cases 5 and 6 through the CLI: a JSON bomb in manifest.json stops training with one
line, and meta.json sizes that are not ints never reach evaluate's resize."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.e2e.trust_helpers import one_error_line, train_args
from tests.fuzz import shardkit
from tests.fuzz.mutate import nesting_bomb
from tests.util import cli

pytestmark = pytest.mark.slow  # trains, and evaluates the shared tiny run


def test_train_refuses_a_manifest_bomb_with_one_line(tmp_path):
    shards = shardkit.copy_of("plain", tmp_path / "shards")
    (shards / "manifest.json").write_bytes(nesting_bomb(200_000))
    r = cli(*train_args(shards, tmp_path / "run", "train.max_steps=2"))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "manifest.json: JSON nested more than" in one_error_line(r)


def test_evaluate_refuses_meta_sizes_given_as_strings_or_floats(tmp_path, tiny_shards, tiny_run):
    shards, run = tmp_path / "shards", tiny_run
    shutil.copytree(tiny_shards, shards)
    name = shardkit.read_manifest_dict(shards)["splits"]["test"]["shards"][0]["name"]
    members = shardkit.read_members(shards / name)
    for width in ("60000", 1e300):
        i = next(i for i, (n, _) in enumerate(members) if n.endswith(".meta.json"))
        meta = {**json.loads(members[i][1]), "width": width, "height": width}
        members[i] = (members[i][0], json.dumps(meta).encode())
        (shards / name).write_bytes(shardkit.tar_bytes(members))
        shardkit.refresh_entry(shards, name)
        out = tmp_path / f"eval-{width}"
        r = cli("evaluate", "--checkpoint", run / "best", "--data", shards, "--split", "test",
                "--out", out)
        assert r.returncode == 2, r.stderr[-3000:]
        assert "meta.json width" in one_error_line(r)
        assert not list(out.glob("predictions/*.png"))
