"""Small collectives the trainer needs beyond what accelerate offers.

Each helper is a no-op (returns its local answer) when no process group is running, so the
same code path serves one process and many. Tensors live on the accelerator's device because
NCCL only reduces CUDA tensors (gloo takes CPU ones).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch
import torch.distributed as dist

from unetdist.errors import ConfigError
from unetdist.log import one_warning_per_job, warn

PRECISIONS = ("no", "bf16", "fp16", "auto")  # auto: bf16 where the device has it, else no
RESOLVED = ("no", "bf16", "fp16")  # what `resolve_precision` returns


def resolve_precision(name: str, *, inference: bool = False, cuda: bool | None = None) -> str:
    """The precision a job really uses: the one place that decides it.

    fp16 needs CUDA (accelerate would silently run fp32 on a CPU): for training that is an
    error; inference of an fp16-trained model on a CPU runs in fp32 and says so.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if name == "auto":
        return auto_precision()
    if name not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {'|'.join(PRECISIONS)}, got {name!r}")
    if name == "fp16" and not cuda:
        if not inference:
            raise ConfigError("train.precision must be no|bf16 without CUDA, got 'fp16'")

        warn("the model was trained with fp16, which needs CUDA: inferring in fp32 on the CPU")
        return "no"
    return name


def make_accelerator(precision: str, grad_accum: int = 1, **kwargs: Any):
    """The one Accelerator factory (train, evaluate, bench): CPU when there is no CUDA.

    `precision` is what `resolve_precision` returned at the command's entry point (`fit`,
    `evaluate`), passed on rather than decided again here.
    """
    from accelerate import Accelerator  # lazy: importing accelerate costs ~1 s

    if precision not in RESOLVED:
        raise ValueError(f"make_accelerator takes a resolved precision ({'|'.join(RESOLVED)}: "
                         f"resolve_precision's answer), got {precision!r}")
    one_warning_per_job()
    _release_other_precision(precision)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision,
                       gradient_accumulation_steps=grad_accum, **kwargs)


def _release_other_precision(precision: str) -> None:
    """Forget a finished single-process Accelerator of another precision.

    From Python, `fit` (bf16) then `evaluate_checkpoints` (an fp32 checkpoint) in one session
    otherwise fails: accelerate keeps the first Accelerator's precision process-wide. Only a
    differing precision is reset, so an Accelerator of the same precision keeps its state.
    """
    state = sys.modules.get("accelerate.state")
    if state is None:
        return
    if state.AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        forget_accelerator_state()


def forget_accelerator_state() -> None:
    """Let the next Accelerator in this (single) process choose its own precision.

    accelerate keeps the first Accelerator's settings process-wide and refuses a second one
    with another precision. `make_accelerator` calls this when the precision changes (`unetdist
    bench` runs sections of both one after another: on a CPU with native bf16 the CPU recipe's
    `auto` is bf16, the other sections fp32); tests call it to start from a fresh state.
    """
    state = sys.modules.get("accelerate.state")
    if state is None or is_distributed():
        return  # nothing built yet; a live process group is not ours to tear down
    state.AcceleratorState._reset_state(reset_partial_state=True)
    state.GradientState._reset_state()


def pick_device(name: str = "auto") -> torch.device:
    """The one device decision outside an Accelerator: CUDA when present ("auto"), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available")
    return dev


def collective_device() -> torch.device:
    """Where a tensor must live to be reduced: NCCL reduces CUDA tensors only, gloo CPU ones."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def inference_autocast(accelerator: Any, precision: str, device: torch.device):
    """The accelerator's autocast, else `precision` (the training precision) on DEVICE.

    Without an accelerator (predict, W&B masks) fp16 runs only on CUDA: a CPU scores in fp32.
    """
    if accelerator is not None and getattr(accelerator, "mixed_precision", "no") != "no":
        return accelerator.autocast()
    dtype = _AUTOCAST_DTYPES.get(precision) if accelerator is None else None
    if dtype is None or (dtype is torch.float16 and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def uses_grad_scaler(acc: Any) -> bool:
    """fp16 training skips steps on overflow; the trainer asks the accelerator, not the config."""
    return getattr(acc, "scaler", None) is not None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_of_process() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def sum_across(values: list[float], device: torch.device) -> list[float]:
    """All-reduce (sum) a few scalars in one collective; every rank gets the same list."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every rank's buffers (BatchNorm running stats) with rank `src`'s.

    DDP syncs buffers at the start of each forward, but each rank then updates its own copy
    from its own batch, so after the last step they differ; validation and the exported model
    must see a single copy.
    """
    if not is_distributed():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (small picklable objects only)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16; Linux flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_precision() -> str:
    """What `train.precision=auto` means on this machine: bf16 where the device has it, else
    fp32 ("no"). On CUDA that is an Ampere-or-newer GPU; on CPU native bf16 instructions
    (emulated bf16 on an older CPU is slower than fp32)."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_bf16() else "no"
