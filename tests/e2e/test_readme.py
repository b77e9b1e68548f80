"""Issue 18 "done when": the README walked top to bottom as a new user would.

Every command of the README's fenced shell blocks runs, in order, with the README's own
arguments, in a fresh working folder (where `configs/` and `launch/` are the repository's);
the only changes are documented scale-down overrides appended to training commands and a free
rendezvous port for `accelerate launch`. A command that cannot run here must be listed in SKIP
with the reason, so a new README command breaks this test until someone decides.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.readme import readme_commands
from tests.util import REPO, free_port, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.dist]

SKIP = {  # pattern (re.search on the command line) -> why it cannot run in a test
    r"^make test": "the whole test suite, of which this test is a part",
    r"^make demo": "creates .venv with pip (network); tests/e2e/test_install.py runs the demo",
    r"/data/(DRIVE|CHASEDB1|STARE|seed|x)\b": "needs the real dataset (or a folder of the user's)",
    r"my_images/": "needs the user's own images",
    r"^(?!unetdist (config|doctor) ).*(drive_unet|drive-shards|/root/shared-storage)":
        "needs DRIVE (not on development machines)",
    r"^unetdist bench --out": "the full benchmark takes minutes; the --quick line runs",
    r"^unetdist bench --gpu": "minutes (compiles) even in its CPU form; tests/e2e/test_bench_gpu.py",
    r"=\.\.\.(\s|$)": "a placeholder (key=...) for the user's own path",
    r"train\.max_minutes=5": "a 5-minute time-budget example on the user's data",
    r"^unetdist sweep|runs/kfold": "needs a sweep file the user writes (the sweep tests run one)",
}
# Scale-down through documented overrides only (train.max_steps etc.), appended to the line.
SCALE = {
    " synth data/raw ": ["--n-train", "6", "--n-test", "3"],
    " train ": ["train.max_steps=4", "train.eval_every=2", "checkpoint.every_steps=2",
                "model.width=8", "train.log_seconds=0.5"],
}


def _skip_reason(line: str) -> str | None:
    return next((why for pat, why in SKIP.items() if re.search(pat, line)), None)


def _argv(line: str) -> list[str]:
    argv = shlex.split(line)
    if argv[0] == "unetdist":
        argv = [sys.executable, "-m", "unetdist", *argv[1:]]
    elif argv[:2] == ["accelerate", "launch"]:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port",
                str(free_port()), *argv[2:]]
    for key, extra in SCALE.items():
        if key in f" {line} " and "--check" not in argv:
            argv += extra
    return argv


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("readme")
    for d in ("configs", "launch"):
        (home / d).symlink_to(REPO / d)
    ran, skipped = {}, {}
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS")  # as a new user's shell: the thread policy decides
    for line in readme_commands():
        why = _skip_reason(line)
        if why:
            skipped[line] = why
            continue
        t0 = time.monotonic()
        r = subprocess.run(_argv(line), cwd=home, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
        ran[line] = r
        print(f"{time.monotonic() - t0:6.1f} s  {line}")
        ok = r.returncode == 0 or (line.startswith("unetdist doctor --path")
                                   and "path does not exist" in r.stderr)
        assert ok, f"README command failed: {line}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return {"home": home, "ran": ran, "skipped": skipped}


def _train(walk) -> subprocess.CompletedProcess:
    return next(r for line, r in walk["ran"].items()
                if "accelerate launch" in line and " train " in line)


def test_the_walk_produces_what_the_readme_says(walk):
    home = walk["home"]
    assert len(walk["ran"]) >= 15, sorted(walk["ran"])
    run = home / "runs" / "mine"
    for path in ("config.yaml", "best/model.safetensors", "checkpoints/latest",
                 "eval-shards-test/metrics.json", "report.html"):
        assert (run / path).exists(), path
    assert json.loads((run / "eval-shards-test" / "metrics.json").read_text())["num_images"] == 3
    assert (home / "runs" / "mine.safetensors").is_file() and (home / "runs" / "mine.onnx").is_file()
    assert sorted(p.name for p in (home / "predictions").glob("*_prob.png"))
    assert (run / "eval-shards-test-step-000004" / "metrics.json").is_file()  # evaluate .../latest


def test_training_output_is_one_line_per_event(walk):
    """Issue 18.5: validation and checkpoint lines once per job, full progress lines off a TTY."""
    r = _train(walk)
    out = r.stdout + r.stderr
    val = re.findall(r"^step (\d+) val dice \d\.\d{3}( \(best\))? auc \d\.\d{3} · \d+ s$", out,
                     re.MULTILINE)
    assert [int(s) for s, _ in val] == [2, 4], out
    assert re.findall(r"^saved (step-\d{6}) \(\d+\.\d s\)$", out, re.MULTILINE) == [
        "step-000002", "step-000004"], out
    assert "\r" not in out  # no carriage-return bars in a log file
    assert re.search(r"^train: \d+/4 step", r.stderr, re.MULTILINE), r.stderr
    assert len(re.findall(r"^torch threads per process: ", out, re.MULTILINE)) == 1
    assert len(re.findall(r"^done: ", out, re.MULTILINE)) == 1


def test_every_skip_is_needed(walk):
    """A SKIP pattern that matches no README line is stale."""
    lines = readme_commands()
    for pat in SKIP:
        assert any(re.search(pat, ln) for ln in lines), pat


def test_helpers_see_continuations_and_comments():
    text = "```bash\na \\\n   b  # note\n# only a comment\nc\n```\n```python\nx\n```\n"
    assert readme_commands(text) == ["a b", "c"]


