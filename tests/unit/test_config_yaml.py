"""Issue 18.1: YAML 1.1 booleans in string enums, and every README and docs/ override through
the parser."""

from __future__ import annotations

import pytest

from tests.readme import doc_commands, overrides_and_config, split_command
from tests.util import REPO
from unetdist.config import load_config
from unetdist.errors import ConfigError


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
    overrides = [o for o in overrides if not o.endswith("=...")]  # placeholders in the docs
    load_config(REPO / config if config else None, overrides)
