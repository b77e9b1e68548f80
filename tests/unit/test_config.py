import pytest
import yaml

from tests.util import REPO, cli
from unetdist.config import RunConfig, load_config, to_yaml
from unetdist.errors import ConfigError


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


def test_eval_resize_follows_the_training_resize_unless_set():
    assert load_config(None, []).eval.resize == 0
    assert load_config(None, ["data.resize=512"]).eval.resize == 512
    assert load_config(None, ["data.resize=512", "eval.resize=0"]).eval.resize == 0
    with pytest.raises(ConfigError, match="eval.resize"):
        load_config(None, ["eval.resize=3"])
