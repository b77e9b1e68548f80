#!/usr/bin/env bash
# Train on this machine: one process per visible GPU, or NPROC CPU processes over gloo when
# there is no GPU. Arguments are config overrides passed to `unetdist train`.
#
#   CONFIG=configs/drive_unet.yaml launch/train.sh                  # every visible GPU
#   NPROC=4 CONFIG=configs/drive_unet.yaml launch/train.sh optim.lr=3e-4 train.max_steps=2000
#
# Knobs (environment variables):
#   CONFIG     experiment YAML                                                   (required)
#   NPROC      processes (default: the visible GPUs, else 1; without GPUs, CPU processes)
#   MAIN_PORT  local rendezvous port for NPROC > 1 (default: a free port)
#   PYTHON     interpreter with unetdist installed
#              (default: the repository's .venv/bin/python if present, else python3)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "launch/train.sh: error: $*" >&2; exit 2; }

[ -n "${CONFIG:-}" ] || die "set CONFIG to the experiment YAML, e.g. CONFIG=configs/drive_unet.yaml"
[ -f "$CONFIG" ] || die "CONFIG=$CONFIG not found"
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x "$HERE/../.venv/bin/python" ] && PYTHON=$HERE/../.venv/bin/python
fi

GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
NPROC=${NPROC:-$((GPUS > 0 ? GPUS : 1))}
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "NPROC must be a positive integer, got '$NPROC'"
if [ "$GPUS" -gt 0 ] && [ "$NPROC" -gt "$GPUS" ]; then
    die "NPROC=$NPROC but only $GPUS GPU(s) are visible (CUDA_VISIBLE_DEVICES)"
fi

LAUNCH=("$PYTHON" -m accelerate.commands.launch)
if [ "$NPROC" = 1 ]; then
    LAUNCH+=(--config_file "$HERE/single_gpu.yaml")
else
    # MULTI_GPU topology; on a CPU-only box the trainer's Accelerator(cpu=True) makes it gloo
    MAIN_PORT=${MAIN_PORT:-$("$PYTHON" -c \
        'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
    LAUNCH+=(--config_file "$HERE/multi_gpu.yaml" --num_processes "$NPROC"
             --main_process_port "$MAIN_PORT")
fi
# One process validates the config and the data paths first: a mistake is one `error:` line
# and exit 2, not an error per worker followed by the launcher's traceback.
"$PYTHON" -m unetdist train --check --config "$CONFIG" "$@" >&2 || exit $?
device=$([ "$GPUS" -gt 0 ] && echo GPU || echo "CPU (gloo)")
echo "launch/train.sh: $NPROC process(es) on $device, config $CONFIG" >&2
exec "${LAUNCH[@]}" -m unetdist train --config "$CONFIG" "$@"
