"""The helpers behind issue 24's untrusted names: one sample id rule, `inside`, writes that
never follow a planted symlink, user write paths as one line (sweep summary, W&B upload)."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

from unetdist import atomic
from unetdist.atomic import inside, temp_sibling, writable_folder, write_atomic
from unetdist.data import keys
from unetdist.data.ingest import layouts
from unetdist.errors import DataError, FileSystemError, UserError


@pytest.mark.parametrize("name", ["../x.png", "/etc/x.png", "a/b.png", "..", ".", "", "x\0.png"])
def test_inside_refuses_names_that_are_not_one_plain_file_name(tmp_path, name):
    with pytest.raises(UserError, match="not a plain file name"):
        inside(tmp_path, name)


def test_inside_keeps_plain_names_even_through_a_linked_folder(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert inside(tmp_path / "link", "01_test.png") == tmp_path / "link" / "01_test.png"
    assert inside(tmp_path, "..png") == tmp_path / "..png"  # a name, not the parent


def test_ingest_and_readers_share_one_sample_id_rule():
    assert not hasattr(layouts, "ID_RE")  # ingest asks keys.py, no second definition
    good = [{"__key__": k} for k in ("01_test", "Image_01L", "a-b")]
    assert list(keys.checked_keys(good, "s.tar")) == good
    for bad in ("../x", "/abs/x", "a b", "x" * 129, "", None, "é"):
        assert not keys.is_sample_id(bad)
        with pytest.raises(DataError, match=r"shard s\.tar: sample key .* is not a sample id"):
            list(keys.checked_keys([{"__key__": bad}], "s.tar"))
    with pytest.raises(DataError, match="'a' appears twice"):
        list(keys.checked_keys([{"__key__": "a"}, {"__key__": "b"}, {"__key__": "a"}], "s.tar"))


def test_a_symlink_planted_at_the_temporary_or_final_name_is_never_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "out" / "metrics.json"
    target.parent.mkdir()
    temp_sibling(target).symlink_to(victim)  # the name this thread will use, planted first
    target.symlink_to(victim)
    write_atomic(target, "{}\n")
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_text() == "{}\n"
    assert sorted(os.listdir(target.parent)) == ["metrics.json"]
    assert temp_sibling(target).name.endswith(f"-{os.getpid()}-{threading.get_ident()}")


def test_writable_folder_names_the_setting_and_what_is_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileSystemError, match=r"f \(--out\): it is a file, not a folder"):
        writable_folder(tmp_path / "f", "--out")
    with pytest.raises(FileSystemError, match=r"cannot write into .*f/sub \(--out\): a file is "
                                              "in the way"):
        writable_folder(tmp_path / "f" / "sub", "--out")
    assert writable_folder(tmp_path / "new" / "out", "--out").is_dir()
    assert os.listdir(tmp_path / "new" / "out") == []  # the probe is gone


def test_sweep_summary_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from tests.unit.test_sweep import _spec
    from unetdist.tools import sweep

    doc = sweep.expand(_spec(tmp_path, parameters={"seed": [0, 1]}))

    def full(f, raw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_bytes", full)
    with pytest.raises(FileSystemError, match=r"cannot write the sweep summary into .*sw "
                                              r"\(the sweep spec's out\).*no space left"):
        sweep.summarize(tmp_path / "sw", doc)
    assert not [p for p in (tmp_path / "sw").iterdir() if ".tmp-" in p.name]


def test_wandb_model_upload_skips_links_out_of_best(tmp_path, monkeypatch):
    import wandb

    from unetdist.config.sections import WandbConfig
    from unetdist.track.wandb_tracker import WandbTracker

    best = tmp_path / "run" / "best"
    best.mkdir(parents=True)
    (best / "model.safetensors").write_bytes(b"\0" * 8)
    (best / "metrics.json").write_text(json.dumps({"step": 3}))
    secret = tmp_path / "id_rsa"
    secret.write_text("secret")
    (best / "config.yaml").symlink_to(secret)
    added: list[tuple[str, str]] = []

    class Artifact:
        def __init__(self, *a, **k):
            pass

        def add_file(self, path, name=None):
            added.append((name, path))

        def add_dir(self, path):
            added.append(("<dir>", path))

    class Run:
        def log_artifact(self, art, aliases=None):
            self.aliases = aliases

    monkeypatch.setattr(wandb, "Artifact", Artifact)
    t = WandbTracker(WandbConfig(mode="disabled", log_model=True), tmp_path / "run", {})
    t._run, t._run_id = Run(), "abc12345"
    t.log_model(best)
    assert [n for n, _ in added] == ["metrics.json", "model.safetensors"]
    assert all(Path(p).parent == best for _, p in added)
