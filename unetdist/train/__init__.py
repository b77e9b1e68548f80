"""Training.

- `loop.py` — `fit()`: the loop, checkpoints, preemption
- `validation.py` — validation during training (binary or per-class), best/ export, W&B masks
- `step.py` — one optimizer step and its single agreement all-reduce (one host sync)
- `setup.py` — accelerator, model/optimizer/scheduler, resume, run dir (before step 1)
- `checkpoint.py` — `save_checkpoint`/`load_checkpoint` over one list of stateful parts
  (TrainState, budget, scheduler, EMA), atomic and crash-safe; pruning, best/ export
- `class_fit.py` — the model's outputs and loss follow (or must fit) the shards' class table
- `resume.py` — which checkpoint a run resumes and whether it may (before anything is built)
- `optim.py` — optimizers and LR schedules (registries)
- `budget.py` — the training-time budget (`train.max_minutes`), agreed across ranks
- `ema.py` — the EMA of the weights (`train.ema_decay`), checkpointed as safetensors
- `losses.py` — FOV-masked binary losses and the registry of every loss name
- `multiclass_losses.py` — multi-class (softmax CE + Dice) and multi-label (per-channel BCE +
  Dice) losses, with class weights and an ignore index
- `compile_cache.py` — repairs torch.compile's kernel cache after a killed compile
- `preempt.py` — the preemption flag set by signals (SIGINT too: Ctrl-C checkpoints)
- `threads.py` — the CPU thread policy (affinity and cgroup aware)
- `runlock.py` — one training per run folder: rank 0's lock naming its holder
- `faults.py` — test-only fault injection, wrapped around the run from outside
"""
