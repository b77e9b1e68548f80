"""Test-only fault injection, driven by the UNETDIST_FAULT environment variable.

Examples: `nan_loss:rank=1:step=3` (that rank's loss becomes NaN at optimizer step 3),
`save_crash:step=4` (the checkpoint of step 4 raises after every rank wrote its files),
`inf_grad:step=2` (every rank's gradients overflow after a finite loss),
`stall:step=5` (every rank sleeps before step 5 until a preemption signal arrives, so a test can
signal or kill a run at a known point). Several faults are separated by commas. Unset in
normal use: then every query is a cheap dictionary miss.
"""

from __future__ import annotations

import os

ENV = "UNETDIST_FAULT"


def _parse(spec: str) -> list[tuple[str, dict[str, int]]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, *args = item.split(":")
        out.append((kind, {k: int(v) for k, v in (a.split("=", 1) for a in args)}))
    return out


def fault(kind: str, *, step: int, rank: int = 0) -> bool:
    """True when UNETDIST_FAULT asks for `kind` at this step on this rank."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    for name, where in _parse(spec):
        if name == kind and where.get("step", step) == step and where.get("rank", rank) == rank:
            return True
    return False
