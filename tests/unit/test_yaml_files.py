"""YAML written by someone else (issue 24 case 11): config files and sweep specs with broken
syntax, duplicated keys, alias bombs or deep nesting are one `error:` line with FILE:LINE and
exit 2; what YAML legitimately offers (anchors, merge keys, `1e-3`) still works."""

from __future__ import annotations

import tracemalloc

import pytest

from unetdist.cli import main
from unetdist.config import load_config
from unetdist.errors import ConfigError
from unetdist.yamlio import load_yaml

BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

CASES = [
    ("dup.yaml", "optim:\n  name: adamw\n  lr: 1.0e-3\n  lr: 2.0e-3\n", 4,
     "duplicate key 'lr' (first at line 3)"),
    ("dup_top.yaml", "seed: 1\nmodel: {width: 8}\nseed: 2\n", 3, "duplicate key 'seed'"),
    ("flow.yaml", "model: {width: 8, width: 16}\n", 1, "duplicate key 'width'"),
    ("syntax.yaml", "optim:\n  lr: [1, 2\nmodel: unet\n", 3, "expected ',' or ']'"),
    ("indent.yaml", "optim:\n  lr: 1\n bad: 2\n", 3, "expected <block end>"),
    ("tab.yaml", "optim:\n\tlr: 1\n", 2, "found character '\\t'"),
    ("bomb.yaml", BOMB, 1, "aliases expand to more than 10000 nodes"),
    ("cycle.yaml", "a: &a [*a]\n", 1, "aliases expand to more than"),
    ("deep.yaml", "x: " + "[" * 200_000 + "\n", 1, "nested deeper than 64 levels"),
    ("undefined.yaml", "a: *nothing\n", 1, "found undefined alias 'nothing'"),
    ("code.yaml", "seed: 1\na: !!python/object/apply:os.system [touch pwned]\n", 2,
     "could not determine a constructor for the tag"),
]


@pytest.mark.parametrize("name,text,line,problem", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["config", "sweep"])
def test_bad_yaml_is_one_line_with_file_and_line(tmp_path, capsys, name, text, line, problem,
                                                 command):
    path = tmp_path / name
    path.write_text(text)
    argv = ["config", "--config", str(path)] if command == "config" else ["sweep", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: {path}:{line}: ") and problem in err, err


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    tracemalloc.start()
    with pytest.raises(ConfigError, match="more than 10000 nodes"):
        load_yaml(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 << 20  # bytes: the 10^9-node document is never built


def test_not_utf8_and_too_big_are_one_line(tmp_path, capsys):
    (tmp_path / "latin1.yaml").write_bytes(b"model: {name: caf\xe9}\n")
    (tmp_path / "big.yaml").write_text("a: 1\n" + "#" * (2 << 20) + "\n")
    assert main(["config", "--config", str(tmp_path / "latin1.yaml")]) == 2
    assert main(["sweep", str(tmp_path / "big.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: config file {tmp_path / 'latin1.yaml'} is not UTF-8 text (byte 17)",
                   f"error: sweep spec {tmp_path / 'big.yaml'} is larger than 1048576 bytes"]


def test_anchors_merge_keys_and_exponent_floats_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &opt {name: adamw, lr: 1e-3}\n"
                    "optim:\n  <<: *opt\n  lr: 3e-4\n"
                    "model: {width: 8}\n".replace("base: &opt", "_base: &opt"))
    with pytest.raises(Exception, match="_base"):  # unknown keys stay errors
        load_config(path)
    path.write_text("optim: &opt {name: adamw, lr: 3e-4, weight_decay: 1e-5}\n"
                    "model: {width: 8, name: unet}\ntrain: {run_dir: r}\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.model.width) == (3e-4, 1e-5, 8)


def test_a_sweep_value_with_a_newline_and_a_nul_is_one_escaped_line(tmp_path, capsys):
    # found by `make fuzz`: the trial's parameters are quoted in the error, NUL and newline too
    spec = tmp_path / "spec.yaml"
    spec.write_text('method: grid\nparameters:\n  optim.lr: ["\\u00e9\\n\\u0000", 0.003]\n'
                    f"overrides: [data.shared_dir={tmp_path}]\n")
    assert main(["sweep", str(spec), "--launch", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: sweep trial-000"), err
    assert "optim.lr=\u00e9\\n\\x00" in err, err
