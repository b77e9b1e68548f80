"""The run config: loading, precedence, validation messages, `unetdist config`, the README's
overrides, and every shipped experiment YAML (loads, validates, builds; the DRIVE recipes carry
the literature's knobs and differ from each other only in the model)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from tests.readme import doc_commands, overrides_and_config, split_command
from tests.util import REPO, cli
from unetdist.config import RunConfig, load_config, to_dict, to_yaml
from unetdist.errors import ConfigError

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


# -------------------------------------------------------------------------- loading and precedence


def write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_defaults_and_run_dir_from_stem(tmp_path):
    cfg = load_config(write(tmp_path, "seed: 3\n"))
    assert cfg.seed == 3 and cfg.optim.lr == RunConfig().optim.lr
    assert cfg.train.run_dir == "runs/exp"
    assert load_config().train.run_dir == "runs/default"


def test_precedence_cli_over_file_over_default(tmp_path):
    p = write(tmp_path, "optim:\n  lr: 0.01\n  weight_decay: 0.5\n")
    cfg = load_config(p, ["optim.lr=3e-4"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.optim.weight_decay == 0.5
    assert cfg.optim.momentum == RunConfig().optim.momentum


def test_coercion_from_strings():
    cfg = load_config(None, ["data.batch_size=8", "model.bilinear=false", "optim.lr=1e-2",
                             "track.wandb.tags=[a,b]", "data.local_dir=/tmp/x"])
    assert cfg.data.batch_size == 8 and cfg.model.bilinear is False
    assert cfg.optim.lr == pytest.approx(0.01) and cfg.track.wandb.tags == ["a", "b"]
    assert cfg.data.local_dir == "/tmp/x"


def test_in_channels_follow_data_channels():
    assert load_config(None, ["data.channels=rgb"]).model.in_channels == 3
    assert load_config(None, ["data.channels=gray"]).model.in_channels == 1
    with pytest.raises(ConfigError, match="model.in_channels"):
        load_config(None, ["data.channels=rgb", "model.in_channels=1"])


@pytest.mark.parametrize("override, field", [
    ("optim.lr=-1", "optim.lr"),
    ("optim.name=lamb", "optim.name"),
    ("optim.schedule=step", "optim.schedule"),
    ("train.precision=fp8", "train.precision"),
    ("train.max_steps=0", "train.max_steps"),
    ("data.batch_size=abc", "data.batch_size"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.channels=bgr", "data.channels"),
    ("data.on_corrupt=ignore", "data.on_corrupt"),
    ("data.aug.hflip=2", "data.aug.hflip"),
    ("model.name=segformer", "model.name"),
    ("model.norm=layer", "model.norm"),
    ("loss.name=focal", "loss.name"),
    ("eval.overlap=1.5", "eval.overlap"),
    ("eval.split=dev", "eval.split"),
    ("checkpoint.keep_last=1", "checkpoint.keep_last"),
    ("track.wandb.mode=sometimes", "track.wandb.mode"),
    ("seed=-1", "seed"),
    ("model.compile_backend=tvm", "model.compile_backend"),
    ("dist.timeout_s=1", "dist.timeout_s"),
    ("dist.grad_compression=fp8", "dist.grad_compression"),
    ("dist.bucket_mb=0", "dist.bucket_mb"),
    ("data.bogus=1", "data.bogus"),
    ("nosuchsection.x=1", "nosuchsection"),
])
def test_every_validation_error_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert field in str(e.value)


def test_unknown_key_in_yaml_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(write(tmp_path, "optim:\n  lrr: 0.1\n"))


def test_a_mapping_for_a_list_names_the_field(tmp_path):
    # OmegaConf raised a bare TypeError here (found by `make fuzz`)
    with pytest.raises(ConfigError, match="track.wandb.tags must be a list"):
        load_config(write(tmp_path, "track:\n  wandb:\n    tags: {a: 1}\n"))
    with pytest.raises(ConfigError, match="track.wandb.tags must be a list"):
        load_config(None, ["track.wandb.tags={a:1}"])
    assert load_config(write(tmp_path, "track:\n  wandb:\n    tags: [a]\n")).track.wandb.tags == ["a"]


def test_a_deeply_nested_stored_config_is_refused_before_omegaconf_walks_it():
    # 60 levels exhausted Python's recursion inside OmegaConf (found by make fuzz)
    from unetdist.config import config_from_dict

    deep: dict = {}
    node = deep
    for _ in range(200):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(ConfigError, match="nested deeper than 8 levels"):
        config_from_dict(deep)


def test_an_override_value_yaml_cannot_read_is_one_line():
    # a NUL in a sweep parameter value reached OmegaConf's YAML reader (found by make fuzz)
    with pytest.raises(ConfigError, match="control characters") as e:
        load_config(None, ["optim.lr=\x00"])
    assert "\n" not in str(e.value)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_yaml_round_trip():
    cfg = load_config(None, ["optim.lr=0.02", "track.wandb.tags=[x]"])
    again = yaml.safe_load(to_yaml(cfg))
    assert again["optim"]["lr"] == 0.02 and again["track"]["wandb"]["tags"] == ["x"]


def test_eval_resize_follows_the_training_resize_unless_set():
    assert load_config(None, []).eval.resize == 0
    assert load_config(None, ["data.resize=512"]).eval.resize == 512
    assert load_config(None, ["data.resize=512", "eval.resize=0"]).eval.resize == 0
    with pytest.raises(ConfigError, match="eval.resize"):
        load_config(None, ["eval.resize=3"])


# -------------------------------------------------- YAML 1.1 booleans in string enums (issue 18.1)


@pytest.mark.parametrize("spelling", ["no", "off", "false", "No", "'no'"])
def test_precision_no_as_yaml_boolean(spelling, tmp_path):
    assert load_config(None, [f"train.precision={spelling}"]).train.precision == "no"
    f = tmp_path / "c.yaml"
    f.write_text(f"train:\n  precision: {spelling}\n")
    assert load_config(f).train.precision == "no"


def test_other_enums_and_resume_accept_yaml_false():
    cfg = load_config(None, ["track.wandb.mode=off", "train.resume=no", "data.normalize=none"])
    assert (cfg.track.wandb.mode, cfg.train.resume, cfg.data.normalize) == (
        "disabled", "none", "none")


def test_true_is_still_refused():
    with pytest.raises(ConfigError, match=r"train.precision must be one of no\|bf16\|fp16"):
        load_config(None, ["train.precision=yes"])


# ------------------------------------------------------------------------------- `unetdist config`


def test_cli_config_prints_resolved_yaml():
    r = cli("config", "--config", REPO / "configs" / "demo.yaml", "optim.lr=0.005")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["optim"]["lr"] == 0.005


def test_cli_config_error_is_one_line_exit_2():
    r = cli("config", "--config", REPO / "configs" / "demo.yaml", "optim.lr=-1")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "optim.lr" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("config", "data.bogus=1")
    assert r.returncode == 2 and "data.bogus" in r.stderr


# -------------------------------------------------------- every README override through the parser


def _override_lines() -> list[list[str]]:
    lines = [split_command(c) for c in doc_commands()]
    return [a for a in lines if "unetdist" in a and overrides_and_config(a)[1]]


def test_readme_has_override_lines():
    assert len(_override_lines()) >= 3


@pytest.mark.parametrize("argv", _override_lines(), ids=lambda a: " ".join(a)[-60:])
def test_every_readme_override_parses(argv):
    config, overrides = overrides_and_config(argv)
    if "evaluate" in argv or "predict" in argv:  # only eval.* there, checked on a stored config
        overrides = [o for o in overrides if o.startswith("eval.")]
    overrides = [o for o in overrides if not o.endswith("=...")]  # README placeholders
    load_config(REPO / config if config else None, overrides)


# -------------------------------------------------------------------- the shipped experiment YAMLs


def test_the_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"demo", "seed_recipe", "drive_unet", "drive_timm"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_validates_and_builds(path):
    from unetdist.models.registry import build_model

    cfg = load_config(path)
    assert cfg.train.run_dir == f"runs/{path.stem}"
    model = build_model(cfg.model, pretrained=False).eval()
    size = 64 if cfg.model.name == "unet" else 96
    with torch.no_grad():
        out = model(torch.zeros(1, cfg.model.in_channels, size, size))
    assert out.shape == (1, cfg.model.num_classes, size, size)


@pytest.mark.parametrize("stem", ["drive_unet", "drive_timm"])
def test_drive_recipes_have_the_literature_knobs(stem):
    cfg = load_config(REPO / "configs" / f"{stem}.yaml")
    d, a = cfg.data, cfg.data.aug
    assert d.channels in ("green", "rgb") and d.clahe and d.gamma != 1.0
    assert d.crop > 0 and d.resize == 0 and d.shared_dir and d.local_dir and d.stage
    assert a.enabled and a.hflip > 0 and a.vflip > 0 and a.rot90 and a.rotate_deg > 0
    assert a.scale > 0 and a.elastic > 0 and a.brightness > 0 and a.contrast > 0
    assert cfg.loss.name == "bce_dice"
    assert cfg.optim.name == "adamw" and cfg.optim.schedule == "cosine"
    assert 0 < cfg.optim.warmup_steps < cfg.train.max_steps
    assert cfg.eval.split == "val" and cfg.eval.tta
    assert 0 < cfg.train.eval_every <= cfg.train.max_steps
    assert cfg.train.precision == "bf16" and cfg.train.resume == "auto"
    assert cfg.track.wandb.mode == "auto"


def test_drive_timm_is_drive_unet_with_a_timm_encoder():
    unet = to_dict(load_config(REPO / "configs" / "drive_unet.yaml"))
    timm = to_dict(load_config(REPO / "configs" / "drive_timm.yaml"))
    assert timm["model"]["name"] == "timm_unet" and timm["model"]["encoder"] == "resnet34"
    assert timm["model"]["pretrained_path"] is None  # a local file, set by the user
    for cfg in (unet, timm):
        cfg.pop("model")
        cfg["optim"].pop("lr")
        cfg["train"].pop("run_dir")
        cfg["track"]["wandb"].pop("tags")
    assert unet == timm


def test_drive_cpu_is_drive_unet_scaled_down_on_a_time_budget():
    cpu = load_config(REPO / "configs" / "drive_cpu.yaml")
    assert cpu.train.max_minutes == 10.0 and cpu.optim.schedule_by == "time"
    assert cpu.train.precision == "auto"  # bf16 where the CPU has it, resolved at start
    assert cpu.model.width == 16 and cpu.data.crop == 128 and cpu.optim.lr == 2e-3
    assert cpu.optim.warmup_steps == 50 and cpu.train.max_steps > 5000  # time ends the run
    unet = load_config(REPO / "configs" / "drive_unet.yaml")
    assert cpu.data.aug == unet.data.aug and cpu.loss == unet.loss
    assert cpu.eval.tile == 0  # whole image: as good and faster on a CPU (bench evaluation)
    assert dataclasses.replace(cpu.eval, tile=unet.eval.tile) == unet.eval


def test_demo_config_stays_small_and_offline():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.track.wandb.mode == "disabled" and cfg.train.precision == "no"
    assert cfg.data.shared_dir is None and cfg.data.local_dir is None  # set by `unetdist demo`
    assert cfg.model.width <= 32 and cfg.data.crop <= 128 and cfg.train.max_steps <= 500


def test_every_key_in_the_drive_recipes_is_explained():
    """Each leaf setting of the DRIVE recipes that differs from the default carries a comment
    (on its line, or the comment block right above it)."""
    defaults = _flatten(dataclasses.asdict(RunConfig()))
    for stem in ("drive_unet", "drive_timm", "drive_cpu"):
        lines = (REPO / "configs" / f"{stem}.yaml").read_text().splitlines()
        values = _flatten(to_dict(load_config(REPO / "configs" / f"{stem}.yaml")))
        changed = {k.rsplit(".", 1)[-1] for k, v in values.items()
                   if defaults.get(k) != v and k != "train.run_dir"}
        for i, line in enumerate(lines):
            key = line.split(":", 1)[0].strip()
            if key in changed and line.startswith(" ") and not line.rstrip().endswith(":"):
                assert "#" in line or lines[i - 1].lstrip().startswith("#"), \
                    f"{stem}.yaml line {i + 1} has no comment: {line!r}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
