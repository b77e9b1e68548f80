"""The trainer's process-wide settings: backend switches, the CPU check, runtime errors."""

from __future__ import annotations

import pytest
import torch

from unetdist.config import load_config
from unetdist.errors import ConfigError


class FakeAcc:
    local_process_index = 0


def test_backend_switches_follow_the_config():
    from unetdist.train.setup import apply_backend_switches

    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    try:
        apply_backend_switches(load_config(None, ["train.cudnn_benchmark=false",
                                                  "train.tf32=true"]).train)
        assert not torch.backends.cudnn.benchmark
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        apply_backend_switches(load_config(None, ["train.tf32=false"]).train)
        assert torch.backends.cudnn.benchmark  # the default
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def test_cpu_shortage_is_reported_per_node(monkeypatch, capsys):
    from unetdist.train import setup

    monkeypatch.setattr(setup, "usable_cpus", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    enough = load_config(None, ["data.num_workers=1"])
    assert setup.warn_cpu_shortage(enough, FakeAcc()) is None  # 2 x (1 + 1) = 4
    short = load_config(None, ["data.num_workers=6", "data.cache=false"])
    msg = setup.warn_cpu_shortage(short, FakeAcc())
    assert "4 usable CPU(s)" in msg and "= 14" in msg and "data.num_workers" in msg
    assert "warning: 4 usable" in capsys.readouterr().err
    other = FakeAcc()
    other.local_process_index = 1  # one line per node, from its local rank 0
    assert setup.warn_cpu_shortage(short, other) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_gradient_compression_needs_cuda():
    from unetdist.train.setup import training_accelerator

    with pytest.raises(ConfigError, match="dist.grad_compression"):
        training_accelerator(load_config(None, ["dist.grad_compression=bf16"]))


def test_ddp_and_process_group_settings_come_from_the_config():
    from unetdist.train.setup import accelerator_kwargs

    cfg = load_config(None, ["dist.timeout_s=90", "dist.bucket_mb=50",
                             "dist.grad_compression=bf16"])
    ddp, pg = accelerator_kwargs(cfg)["kwargs_handlers"]
    assert pg.timeout.total_seconds() == 90
    assert ddp.gradient_as_bucket_view and not ddp.broadcast_buffers and ddp.bucket_cap_mb == 50
    assert ddp.comm_hook.value == "bf16"


def test_shared_memory_shortage_is_reported(monkeypatch, capsys):
    import shutil

    from unetdist.train import setup

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    cfg = load_config(None, ["data.num_workers=6", "data.crop=512", "data.batch_size=16",
                             "data.channels=gray"])
    usage = shutil.disk_usage("/")
    # what counts is the room left: a big /dev/shm that others filled is no help
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: usage._replace(total=2**40, free=64 * 2**20))
    msg = setup.warn_shm_shortage(cfg, FakeAcc())
    # 8 x 6 x 2 batches x 16 x 512^2 px x (4 + 1 + 1) bytes = 2304 MiB
    assert "has 64 MiB free" in msg and "~2304 MiB" in msg and "--shm-size" in msg
    assert "warning:" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=2**40))
    assert setup.warn_shm_shortage(cfg, FakeAcc()) is None
    assert setup.warn_shm_shortage(load_config(None, ["data.num_workers=0"]), FakeAcc()) is None


def test_the_accelerator_takes_the_precision_resolved_at_the_entry_point():
    from unetdist.distributed import make_accelerator, resolve_precision

    with pytest.raises(ValueError, match="resolved precision.*'auto'"):
        make_accelerator("auto")  # fit and evaluate resolve it once and pass the answer on
    assert resolve_precision("auto") in ("no", "bf16")


def test_one_python_session_builds_accelerators_of_two_precisions_one_after_another():
    """From Python: train in bf16, then evaluate an fp32 checkpoint. accelerate alone refuses
    the second Accelerator ("AcceleratorState has already been initialized")."""
    from unetdist.distributed import forget_accelerator_state, make_accelerator

    forget_accelerator_state()
    try:
        first = make_accelerator("bf16")
        again = make_accelerator("bf16")
        assert again.mixed_precision == first.mixed_precision == "bf16"
        assert make_accelerator("no").mixed_precision == "no"
        assert make_accelerator("bf16").mixed_precision == "bf16"
    finally:
        forget_accelerator_state()
