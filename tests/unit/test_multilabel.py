"""Multi-label data end to end in one process (issue 25): overlapping labels (vessel, artery,
vein) shipped as one binary mask folder per label -> shards with one 0/255 PNG per label ->
training bit masks -> the per-label loss -> per-label metrics at per-label thresholds, checked
against sklearn on masks rebuilt here from the raw files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score
from torch import nn

from tests.inproc import run_main
from tests.twins import MULTILABEL_NAMES, make_multilabel_folders
from unetdist.config import EvalConfig, LossConfig, load_config
from unetdist.data.classes import ClassTable, from_bitmask, to_bitmask
from unetdist.errors import ConfigError, DataError

SPECS = ["background=0,0,0", "vessel=255,255,255", "artery=255,0,0", "vein=0,0,255"]
TABLE = ClassTable.from_specs(SPECS, mode="multilabel")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_multilabel_folders(tmp_path_factory.mktemp("ml") / "raw", n_train=3, n_test=2,
                                   size=(64, 72))


@pytest.fixture(scope="module")
def shards(raw):
    from unetdist.data.ingest.writer import shard_dataset

    out = raw.parent / "shards"
    shard_dataset(raw, out, layout="folders", classes=TABLE, split_val=0,
                  test_images="test_images", test_labels="test_labels", progress=False)
    return out


def _raw_masks(raw, split_dir: str, stem: str) -> np.ndarray:
    """(C, H, W) {0,1} from the raw files, read with Pillow (any nonzero pixel is in)."""
    return np.stack([np.array(Image.open(raw / split_dir / n / f"{stem}.png")) > 0
                     for n in MULTILABEL_NAMES]).astype(np.uint8)


# ----------------------------------------------------------------------------------- table


def test_bit_masks_round_trip_and_the_table_bounds_its_labels():
    rng = np.random.default_rng(0)
    ch = (rng.random((3, 9, 7)) < 0.5).astype(np.uint8)
    bits = to_bitmask(ch)
    assert np.array_equal(bits, ch[0] + 2 * ch[1] + 4 * ch[2])
    assert np.array_equal(from_bitmask(bits, 3), ch)
    assert TABLE.out_channels == 3 and TABLE.label_names == MULTILABEL_NAMES
    assert TABLE.valid_values()[:9].tolist() == [True] * 8 + [False]
    # overlaps show the later label: artery+vein (6) and vessel+vein (5) in vein's blue
    lut = TABLE.lookup()
    assert lut[1].tolist() == [255, 255, 255] and lut[3].tolist() == [255, 0, 0]
    assert lut[5].tolist() == lut[6].tolist() == lut[7].tolist() == [0, 0, 255]
    many = ["background=0,0,0"] + [f"l{i}={i},{i},{i}" for i in range(1, 8)]
    with pytest.raises(ConfigError, match="at most 6 labels besides the background, got 7"):
        ClassTable.from_specs(many, mode="multilabel")


# ----------------------------------------------------------------------------------- ingest


def test_shards_hold_one_mask_per_label_and_decode_to_the_raw_masks(raw, shards):
    import tarfile

    from unetdist.data.pipeline import eval_samples

    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["classes"]["mode"] == "multilabel"
    test_tar = next(p for p in sorted(shards.glob("*.tar")) if "test" in p.name)
    with tarfile.open(test_tar) as tar:
        names = tar.getnames()
    assert {"41.channel1.png", "41.channel2.png", "41.channel3.png"} <= set(names)
    assert not any(n.endswith(("label.png", "classes.png")) for n in names)
    cfg = load_config(None, ["data.channels=rgb"])
    for s in eval_samples(cfg.data, str(shards), "test", rank=0, world_size=1):
        bits = s["label"][0, 0].numpy()
        assert np.array_equal(from_bitmask(bits, 3), _raw_masks(raw, "test_labels", s["key"]))
    crossing = _raw_masks(raw, "labels", "01")
    assert (crossing[1] & crossing[2]).any()  # the twin really overlaps (a crossing)


def test_a_missing_label_folder_or_file_and_a_gray_mask_are_named(raw, tmp_path):
    import shutil

    from unetdist.data.ingest.writer import shard_dataset

    def shard(root):
        with pytest.raises(DataError) as e:
            shard_dataset(root, tmp_path / "out", layout="folders", classes=TABLE,
                          progress=False)
        return str(e.value)

    bad = tmp_path / "a"
    shutil.copytree(raw, bad)
    shutil.rmtree(bad / "labels" / "artery")
    assert "label 'artery' folder not found" in shard(bad)
    shutil.copytree(raw / "labels" / "artery", bad / "labels" / "artery")
    (bad / "labels" / "vein" / "02.png").unlink()
    assert "no 'vein' label: expected" in shard(bad) and "vein/02.*" in shard(bad)
    shutil.copy(raw / "labels" / "vein" / "01.png", bad / "labels" / "vein" / "02.png")
    gray = np.tile(np.arange(72, dtype=np.uint8) * 3, (64, 1))
    Image.fromarray(gray).save(bad / "labels" / "artery" / "03.png")
    assert "artery/03.png" in shard(bad)


def test_the_command_line_takes_multilabel_only_with_classes_and_folders(raw, tmp_path):
    def cli(*args):
        return run_main(["shard", str(raw), str(tmp_path / "o"), *args])

    r = cli("--layout", "folders", "--multilabel")
    assert r.returncode == 2 and "--multilabel needs the labels" in r.stderr
    r = cli("--layout", "rite", "--multilabel", "--classes", *SPECS)
    assert r.returncode == 2 and "--multilabel reads one mask folder per label" in r.stderr
    r = cli("--layout", "folders", "--multilabel", "--classes", *SPECS, "--split-val", "0",
            "--test-images", "test_images", "--test-labels", "test_labels")
    assert r.returncode == 0, r.stderr
    assert "classes: background, vessel, artery, vein" in r.stdout + r.stderr


# ------------------------------------------------------------------------------------- loss


def test_the_loss_on_bit_masks_is_the_loss_on_the_channels_they_hold():
    from unetdist.train.losses import build_loss
    from unetdist.train.multiclass_losses import multilabel_bce_dice

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    ch = (torch.rand(2, 3, 16, 16, generator=g) < 0.3).float()
    bits = (ch[:, 0] + 2 * ch[:, 1] + 4 * ch[:, 2]).to(torch.uint8)[:, None]
    fov = (torch.rand(2, 1, 16, 16, generator=g) < 0.8).to(torch.uint8)
    loss = build_loss(LossConfig(name="multilabel_bce_dice", class_weights=[1.0, 2.0, 0.5]))
    want = multilabel_bce_dice(logits, ch, fov, torch.tensor([1.0, 2.0, 0.5]))
    assert loss(logits, bits, fov).item() == pytest.approx(want.item(), rel=1e-6)


# ------------------------------------------------------------------------------------- eval


class Pointwise(nn.Module):
    """A 1x1 conv over RGB with 3 outputs: each label's score follows the pixel colours."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x) * 4


def test_per_label_metrics_at_per_label_thresholds_equal_sklearn(raw, shards, tmp_path):
    from unetdist.data.pipeline import eval_samples
    from unetdist.eval.evaluate import evaluate_split
    from unetdist.eval.inference import sliding_window_predict

    cfg = load_config(None, ["data.channels=rgb"])
    ecfg = EvalConfig(tile=0, tta="none", threshold=0.5, auc_bins=1000)
    stored = {"vessel": 0.3, "artery": 0.6}  # vein: none stored -> 0.5
    auto = EvalConfig(tile=0, tta="none", threshold="auto", auc_bins=1000)
    samples = list(eval_samples(cfg.data, str(shards), "test", rank=0, world_size=1))
    model = Pointwise().eval()
    res = evaluate_split(model, samples, auto, table=TABLE, stored_labels=stored,
                         out_dir=tmp_path / "ev", progress=False)
    assert res["label_thresholds"] == {"vessel": 0.3, "artery": 0.6, "vein": 0.5}
    thr = np.array([0.3, 0.6, 0.5]).reshape(-1, 1)
    truth, pred = [], []
    for s in samples:
        p = sliding_window_predict(model, s["image"], ecfg, labels=True)[0].numpy()
        truth.append(_raw_masks(raw, "test_labels", s["key"]).reshape(3, -1))
        pred.append(p.reshape(3, -1) >= thr)
    truth, pred = np.concatenate(truth, 1), np.concatenate(pred, 1)
    for i, name in enumerate(MULTILABEL_NAMES):
        got = res["labels"]["per_label"][name]
        assert got["dice"] == pytest.approx(f1_score(truth[i], pred[i]), abs=1e-9)
        assert got["iou_vessel"] == pytest.approx(jaccard_score(truth[i], pred[i]), abs=1e-9)
    # the written masks are the same decisions, label by label
    mask = np.array(Image.open(tmp_path / "ev" / "predictions" / "41.artery.png")) > 0
    p41 = sliding_window_predict(model, samples[0]["image"], ecfg, labels=True)[0, 1].numpy()
    assert samples[0]["key"] == "41" and np.array_equal(mask, p41 >= 0.6)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["mode"] == "multilabel" and set(metrics["f1_thresholds"]) <= set(
        MULTILABEL_NAMES)
    assert (tmp_path / "ev" / "plots" / "label_metrics.png").is_file()


def test_training_adopts_the_labels_and_refuses_a_loss_that_does_not_fit(shards, tmp_path):
    from unetdist.train.class_fit import adopt_classes, check_classes

    manifest = json.loads((shards / "manifest.json").read_text())
    cfg, note = adopt_classes(load_config(None, []), manifest)
    assert cfg.model.num_classes == 3 and cfg.loss.name == "multilabel_bce_dice"
    assert note.startswith("model.num_classes=3, loss.name=multilabel_bce_dice: from the")
    check_classes(cfg, manifest)
    wrong = load_config(None, ["model.num_classes=3", "loss.name=ce_dice"])
    with pytest.raises(ConfigError, match="loss.name must be multilabel_bce_dice for the "
                                          "shards' labels vessel, artery, vein"):
        check_classes(adopt_classes(wrong, manifest)[0], manifest)


def test_the_fingerprint_counts_each_label_and_each_class(raw, shards, tmp_path):
    from tests.av_shards import av_shards
    from unetdist.data.pipeline import eval_samples
    from unetdist.plan.fingerprint import fingerprint

    fr = fingerprint(str(shards), "test").class_fractions
    masks = np.concatenate([_raw_masks(raw, "test_labels", k).reshape(3, -1)
                            for k in ("41", "42")], axis=1)  # FOV: the whole image here
    want = {"background": float((masks.sum(0) == 0).mean()),
            **{n: float(masks[i].mean()) for i, n in enumerate(MULTILABEL_NAMES)}}
    assert fr == pytest.approx(want, abs=1e-12)
    assert fr["artery"] + fr["vein"] > fr["vessel"]  # overlapping labels: crossings in both
    av = av_shards(tmp_path / "av", n_train=1, n_val=1, n_test=2, size=(64, 64))
    cfg = load_config(None, ["data.channels=rgb"])
    counts, inside = np.zeros(4), 0
    for s in eval_samples(cfg.data, str(av), "test", rank=0, world_size=1):
        lab, fov = s["label"][0, 0].numpy().astype(np.int64), s["fov"][0, 0].numpy() > 0
        counts += np.bincount(lab[fov][lab[fov] != 255], minlength=4)[:4]
        inside += int(fov.sum())
    got = fingerprint(str(av), "test").class_fractions
    assert list(got) == ["background", "artery", "vein", "crossing"]
    assert list(got.values()) == pytest.approx(list(counts / inside), abs=1e-12)


def test_a_sample_whose_labels_do_not_fit_the_table_is_one_data_error(shards, tmp_path):
    """A shard folder from another writer: a table naming 4 labels over samples holding 3
    (the fourth would train as all negative), or a multi-class table over channel masks."""
    import shutil

    from unetdist.data.pipeline import eval_samples

    cfg = load_config(None, ["data.channels=rgb"])
    for i, (edit, want) in enumerate((
            (lambda t: t["entries"].append({"name": "disc", "index": 4, "colour": [9, 9, 9]}),
             "3 channel<c>.png masks, but the shards' table is 5 classes (multilabel)"),
            (lambda t: t.update(mode="multiclass"),
             "3 channel<c>.png masks, but the shards' table is 4 classes (multiclass)"))):
        folder = tmp_path / f"edited{i}"
        shutil.copytree(shards, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        edit(manifest["classes"])
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DataError, match=want.replace("(", r"\(").replace(")", r"\)")):
            list(eval_samples(cfg.data, str(folder), "test", rank=0, world_size=1))


@pytest.mark.parametrize("overrides", [
    ["model.num_classes=3", "loss.name=multilabel_bce_dice"],
    ["model.num_classes=4", "loss.name=ce_dice", "loss.ignore_index=255"]])
def test_plans_probe_steps_a_multilabel_and_a_multiclass_model(overrides):
    """`plan` times a few steps of the planned model on a made-up batch; its (B, 1, H, W) float
    label once reached the multi-label loss unpacked (a shape error instead of a plan)."""
    from unetdist.plan.probe import measure_step

    cfg = load_config(None, ["model.width=8", "model.depth=2", "data.crop=32",
                             "data.channels=rgb", "train.precision=no", *overrides])
    probe = measure_step(cfg, "cpu", batch_size=2, steps=1)
    assert probe.seconds_per_step > 0


def test_plan_on_multilabel_shards_follows_the_labels():
    from unetdist.plan.planner import Plan, decide_classes

    plan = Plan("recipe", {}, [])
    decide_classes(plan, TABLE)
    assert (plan.get("model.num_classes"), plan.get("loss.name")) == (3, "multilabel_bce_dice")
    assert plan.get("loss.ignore_index") == {}  # unset: a multi-label table has no ignore value
    cfg = load_config(None, [f"{d.key}={d.value}" for d in plan.decisions])
    assert cfg.model.num_classes == 3  # the planned keys form a valid config
