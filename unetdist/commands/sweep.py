"""`unetdist sweep`: expand a grid/random spec into run folders, train them, summarise."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

HELP = "offline hyperparameter sweep / k-fold: trials into run folders, a summary table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="SPEC_OR_DIR",
                   help="sweep spec YAML (see docs/commands.md, unetdist sweep), or an expanded sweep folder")
    p.add_argument("--launch", choices=("local", "slurm", "none"), default="local",
                   help="local: train the trials one after another here (default); slurm: "
                        "submit slurm/kfold.sbatch as an array, one trial per task; none: "
                        "only write the run folders' sweep.json")
    p.add_argument("--nproc", type=int, default=1,
                   help="local: processes per trial (accelerate launch when > 1)")
    p.add_argument("--script", default="slurm/kfold.sbatch",
                   help="slurm: the array script (default slurm/kfold.sbatch)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="slurm: extra sbatch option, repeatable (--sbatch-arg=--gpus-per-node=4)")
    p.add_argument("--summary", action="store_true",
                   help="only print/write the summary table of an expanded sweep")
    p.add_argument("--trial", type=int, metavar="I",
                   help="print trial I's `unetdist train` arguments, one per line")


def _submit(folder: Path, n: int, args: argparse.Namespace) -> int:
    import os

    from unetdist.errors import UserError
    from unetdist.log import say

    script = Path(args.script)
    if not script.is_file():
        raise UserError(f"--script {script} not found (run from the repository root or pass "
                        "--script)")
    env = dict(os.environ, TRAIN_SBATCH=str(script.resolve().with_name("train.sbatch")))
    cmd = ["sbatch", "--parsable", f"--array=0-{n - 1}", *args.sbatch_arg, str(script),
           str(folder.resolve())]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError:
        raise UserError("sbatch not found: --launch slurm needs a Slurm login node") from None
    if r.returncode != 0:
        raise UserError(f"sbatch failed: {r.stderr.strip().splitlines()[-1:]}")
    say(f"submitted array job {r.stdout.strip()} ({n} trials); when it has ended: "
        f"unetdist sweep {folder} --summary")
    return 0


def run(args: argparse.Namespace) -> int:
    from unetdist.log import say
    from unetdist.tools import sweep

    if args.summary or args.trial is not None:
        folder, doc = sweep.load_sweep(args.target)
        if args.trial is not None:
            print("\n".join(sweep.trial_args(doc, args.trial)))
            return 0
        print(sweep.summarize(folder, doc)[0])
        return 0
    spec = sweep.read_spec(args.target)
    doc = sweep.expand(spec)
    say(f"sweep: {len(doc['trials'])} trial(s) in {spec.out}")
    if args.launch == "none":
        return 0
    if args.launch == "slurm":
        return _submit(spec.out, len(doc["trials"]), args)
    with sweep.sweep_lock(spec.out, doc):
        failed = sweep.run_local(doc, nproc=args.nproc)
        print(sweep.summarize(spec.out, doc)[0])
    if failed:
        say(f"sweep: {len(failed)} trial(s) failed: {', '.join(failed)}")
    return 1 if failed else 0
