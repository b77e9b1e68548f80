"""Issue 18 "done when": the README, then every docs/*.md, walked top to bottom as a new user
would (issue 22.7: the reference moved to docs/).

Every command of their fenced shell blocks runs, in order (README.md first, then docs/ by file
name), with the documents' own arguments, in one fresh working folder (where `configs/` and
`launch/` are the repository's); the only changes are documented scale-down overrides appended
to training commands and a free rendezvous port for `accelerate launch`. A command that cannot
run here must be listed in SKIP with the reason, so a new documented command breaks this test
until someone decides. Every relative link must reach a file, and a heading where it names one.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.inproc import run_main
from tests.readme import broken_links, doc_commands, doc_files, python_blocks, readme_commands
from tests.util import REPO, free_port, subprocess_env

SKIP = {  # pattern (re.search on the command line) -> why it cannot run in a test
    r"^make test": "the whole test suite, of which this test is a part",
    r"^make demo": "creates .venv with pip (network); tests/e2e/test_install.py runs the demo",
    r"pip install torch": "installs torch from the network (tests/e2e/test_install.py installs "
                          "the package offline)",
    r"/data/(DRIVE|CHASEDB1|STARE|RITE|seed|x|av)\b": "needs the real dataset (or a folder of the user's)",
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
    # half DRIVE's side: a quarter of the pixels for every evaluation line (the last --size wins)
    " synth data/raw ": ["--n-train", "6", "--n-test", "3", "--size", "292x282"],
    " train ": ["train.max_steps=4", "train.eval_every=2", "checkpoint.every_steps=2",
                "model.width=8", "train.log_seconds=0.5"],
}


def _skip_reason(line: str) -> str | None:
    return next((why for pat, why in SKIP.items() if re.search(pat, line)), None)


def _argv(line: str) -> list[str]:
    argv = shlex.split(line)
    if argv[:2] == ["accelerate", "launch"]:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port",
                str(free_port()), *argv[2:]]
    for key, extra in SCALE.items():
        if key in f" {line} " and "--check" not in argv:
            argv += extra
    return argv


def _run(argv: list[str], home, env: dict) -> subprocess.CompletedProcess:
    """A `unetdist` line through `cli.main` in this process (tests/inproc.py: the same argv,
    output and exit status, without an interpreter start that costs more CPU than most of the
    commands; tests/unit/test_cli_errors.py holds the two equal); anything else, such as
    `accelerate launch`, in a process of its own."""
    if argv[0] == "unetdist":
        return run_main(argv[1:], env=env, cwd=home)
    return subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


# only the tests that use `walk` are slow: the link and skip checks read files
@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("readme")
    for d in ("configs", "launch"):
        (home / d).symlink_to(REPO / d)
    ran, skipped = {}, {}
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS")  # as a new user's shell: the thread policy decides
    for line in doc_commands():
        why = _skip_reason(line)
        if why:
            skipped[line] = why
            continue
        t0 = time.monotonic()
        ran[line] = r = _run(_argv(line), home, env)
        print(f"{time.monotonic() - t0:6.1f} s  {line}")
        ok = r.returncode == 0 or (line.startswith("unetdist doctor --path")
                                   and "path does not exist" in r.stderr)
        assert ok, f"documented command failed: {line}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    # the README's Python examples, against the run and images its commands made
    python = [subprocess.run([sys.executable, "-c", code], cwd=home, env=env,
                             capture_output=True, text=True, timeout=600, check=False)
              for code in python_blocks()]
    for code, r in zip(python_blocks(), python):
        assert r.returncode == 0, f"documented Python failed:\n{code}\n{r.stderr[-3000:]}"
    return {"home": home, "ran": ran, "skipped": skipped, "python": python}


def _train(walk) -> subprocess.CompletedProcess:
    return next(r for line, r in walk["ran"].items()
                if "accelerate launch" in line and " train " in line)


@pytest.mark.slow
@pytest.mark.dist
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
    (example,) = walk["python"]  # the API on the walk's own run: a probability map and a mask
    assert re.match(r"^\(\d+, \d+\) float32 [01]\.\d{3} vessel Model\(", example.stdout), example.stdout
    assert "topology" in json.loads((run / "eval-shards-test" / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.dist
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


def test_every_skip_is_needed():
    """A SKIP pattern that matches no documented line is stale."""
    lines = doc_commands()
    for pat in SKIP:
        assert any(re.search(pat, ln) for ln in lines), pat


def test_helpers_see_continuations_and_comments():
    text = "```bash\na \\\n   b  # note\n# only a comment\nc\n```\n```python\nx\n```\n"
    assert readme_commands(text) == ["a b", "c"]
    assert python_blocks(text) == ["x\n"]


def test_the_readme_python_example_uses_the_api():
    """Issue 26.5: the README shows `load_model`, `predict` and `segment` in one runnable block
    (the walk runs it: test_the_walk_produces_what_the_readme_says)."""
    (code,) = python_blocks()
    compile(code, "README.md", "exec")
    for call in ("from unetdist import load_model", "load_model(", ".predict(", ".segment("):
        assert call in code, call


def test_every_relative_link_resolves():
    bad = {str(f.relative_to(REPO)): broken_links(f) for f in doc_files()}
    assert {f: b for f, b in bad.items() if b} == {}


def test_link_checker_sees_missing_files_and_headings(tmp_path):
    (tmp_path / "other.md").write_text("# A `b` c, d\n## Twice\n## Twice\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md#a-b-c-d) [ok](other.md#twice-1) [web](https://x.org/y) [ok](#own)\n"
                   "# Own\n[gone](nothere.md) [bad](other.md#nope)\n```md\n[in code](zz)\n```\n")
    assert broken_links(doc) == ["nothere.md (no such file)", "other.md#nope (no such heading)"]


def test_readme_is_a_front_door():
    """Issue 22.7: short, with the two set-up commands; the reference lives in docs/."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make test" in text and "make demo" in text
    assert {"benchmarks.md", "commands.md", "datasets.md", "launch.md", "trust.md"} <= {
        f.name for f in doc_files()[1:]}
