"""Names the config accepts but does not own: registries, precisions, TTA modes, smp archs.

Allowed names live with what they name (a decision in one place): the model registry, the loss
and optimizer tables, `distributed.PRECISIONS`, `eval.tta.MODES`. The sections ask here when a
config is validated. This module is the config package's only way up the import layers, and it
goes up only inside functions: those modules need torch, which `unetdist --help` and the plain
config commands should not pay for at import. The registries import the section types only for
typing, so no import circle forms at module import.
"""

from __future__ import annotations


def registered(kind: str) -> tuple[str, ...]:
    """Allowed names of one kind: "model", "loss", "optimizer", "schedule", "precision", "tta"."""
    if kind == "model":
        from unetdist.models.registry import MODELS as table
    elif kind == "loss":
        from unetdist.train.losses import LOSSES as table
    elif kind == "optimizer":
        from unetdist.train.optim import OPTIMIZERS as table
    elif kind == "schedule":
        from unetdist.train.optim import SCHEDULES as table
    elif kind == "precision":
        from unetdist.distributed import PRECISIONS as table
    elif kind == "tta":
        from unetdist.eval.tta import MODES as table
    else:
        raise ValueError(f"no registry of {kind!r} names")
    return tuple(table)


def loss_output(name: str) -> str:
    """How loss NAME reads the model's outputs: "sigmoid" (one vessel logit), "softmax" (one
    logit per class) or "multilabel" (one sigmoid per label channel)."""
    from unetdist.train.losses import LOSS_OUTPUTS

    return LOSS_OUTPUTS[name]


def tta_mode(value: object) -> str:
    """eval.tta as a mode name: old configs hold the on/off switch (true/false)."""
    from unetdist.eval.tta import tta_mode as mode

    return mode(value)


def check_smp_arch(arch: str) -> None:
    """smp is an optional extra: its architecture names are asked for only when it is used."""
    from unetdist.models.smp_unet import check_arch

    check_arch(arch)
