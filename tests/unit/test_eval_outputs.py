"""evaluate's output folder: one per data + split beside the run, other results refused."""

from __future__ import annotations

import json

import pytest

from unetdist.errors import UserError
from unetdist.eval.outputs import check_out_dir, clear_results, default_out_dir

INFO = {"data": "/d/drive-shards", "manifest_hash": "a" * 64, "checkpoint": "/r/best"}


def test_default_folder_names_the_data_and_the_split(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000040").mkdir(parents=True)
    data = tmp_path / "chase shards"  # odd characters become one "_"
    assert default_out_dir(run / "best", data, "test") == (run / "eval-chase_shards-test")
    assert default_out_dir(run / "checkpoints" / "step-000040", data, "val") == \
        run / "eval-chase_shards-val-step-000040"


def _earlier(folder, **info) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"info": {**INFO, **info}}))
    (folder / "predictions").mkdir(exist_ok=True)
    (folder / "predictions" / "01_test.png").write_bytes(b"x")


def test_same_evaluation_again_is_allowed_and_an_empty_folder_too(tmp_path):
    assert check_out_dir(tmp_path / "new", INFO, overwrite=False) is False
    _earlier(tmp_path / "ev")
    assert check_out_dir(tmp_path / "ev", INFO, overwrite=False) is False


@pytest.mark.parametrize("other,named", [({"manifest_hash": "b" * 64, "data": "/d/chase"},
                                          "/d/chase"),
                                         ({"checkpoint": "/r/checkpoints/step-000040"},
                                          "step-000040"),
                                         ({"manifest_hash": None, "data": "/d/old"}, "/d/old")])
def test_other_data_or_checkpoint_is_refused_unless_overwrite(tmp_path, other, named):
    ev = tmp_path / "ev"
    _earlier(ev, **other)
    with pytest.raises(UserError, match="--overwrite") as e:
        check_out_dir(ev, INFO, overwrite=False)
    assert named in str(e.value) and "\n" not in str(e.value)
    assert check_out_dir(ev, INFO, overwrite=True) is True
    clear_results(ev)
    assert not (ev / "predictions").exists() and not (ev / "metrics.json").exists()
