"""The config tree's sections: one dataclass per builder, each validating its own fields.

`unetdist.config.run` assembles them into `RunConfig`; builders import their section from
`unetdist.config` (the registries only for typing). Every field has a default and a one-line
comment; `check(prefix)` raises one ConfigError naming the dotted field, the bad value and what
is allowed (the helpers in `unetdist.config.checks`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from unetdist.config.checks import _FALSE_SPELLINGS, _enum, _one_of, _require
from unetdist.config.names import check_smp_arch, registered, tta_mode

# Upper bounds on what sizes memory: generous for real use, but a config (a user's YAML, or one
# stored in a weights file someone else wrote) cannot ask for terabytes before the model exists.
MAX_SIDE = 8192  # px: crops, resizes, tiles (a whole 8 MP fundus image is 3504 x 2336)
MAX_WIDTH = 1024  # channels: model.width, model.decoder_width
MAX_BOTTLENECK = 8192  # channels of the classic UNet's deepest stage, width * 2**depth
MAX_BATCH = 4096  # samples or tiles per forward pass


def _at_most(name: str, value, bound: int) -> None:
    _require(value <= bound, name, value, f"<= {bound} (an upper bound on memory use)")


@dataclass
class AugConfig:
    """Paired image/label/FOV augmentation for training views."""

    enabled: bool = True  # apply augmentation at all
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    rot90: bool = True  # random multiples of 90 degrees
    rotate_deg: float = 15.0  # max small rotation in degrees (0 = off)
    scale: float = 0.1  # max relative zoom in/out (0 = off)
    elastic: float = 0.0  # probability of an elastic/grid distortion
    brightness: float = 0.1  # max additive brightness jitter (fraction of range)
    contrast: float = 0.1  # max multiplicative contrast jitter
    gamma: float = 0.1  # max gamma jitter (gamma in [1-g, 1+g])
    blur: float = 0.1  # probability of a Gaussian blur
    noise: float = 0.02  # std of additive Gaussian noise (fraction of range; 0 = off)

    def check(self, p: str) -> None:
        for f in ("hflip", "vflip", "elastic", "blur"):
            v = getattr(self, f)
            _require(0.0 <= v <= 1.0, f"{p}.{f}", v, "a probability in [0, 1]")
        for f in ("rotate_deg", "scale", "brightness", "contrast", "gamma", "noise"):
            _require(getattr(self, f) >= 0, f"{p}.{f}", getattr(self, f), ">= 0")
        _require(self.scale < 1, f"{p}.scale", self.scale, "< 1")
        _require(self.gamma < 1, f"{p}.gamma", self.gamma, "< 1")


@dataclass
class DataConfig:
    """Where the shards are and how samples become batches."""

    shared_dir: str | None = None  # shard folder (with manifest.json) on shared storage
    local_dir: str | None = None  # node-local copy; staged from shared_dir when set
    stage: bool = True  # stage shared_dir -> local_dir at start (else read local_dir as is)
    stage_timeout: float = 3600.0  # seconds non-copying local ranks wait for the staged copy
    channels: str = "green"  # input channels: rgb | green | gray
    clahe: bool = False  # contrast-limited adaptive histogram equalisation
    gamma: float = 1.0  # fixed gamma correction applied in preprocessing (1 = off)
    normalize: str = "zscore"  # zscore (per image, inside FOV) | unit (x/255) | none
    crop: int = 128  # training crop size in px (0 = full image)
    crop_in_fov: float = 0.9  # fraction of crops whose centre is forced inside the FOV
    # fraction of crops centred on a pixel of a foreground class drawn uniformly among those in
    # the image (nnU-Net's foreground oversampling: rare classes are seen more; 0 = off)
    crop_class_bias: float = 0.0
    resize: int = 0  # seed mode: resize whole images to N x N instead of cropping (0 = off)
    # resize every image by this factor at load, in training and (as eval.scale) evaluation:
    # `unetdist plan` sets it to bring the vessel calibre to the recipe's (1 = native)
    scale: float = 1.0
    batch_size: int = 4  # samples per process per step
    num_workers: int = 2  # DataLoader workers per process
    stall_seconds: float = 120.0  # no batch from the workers for this long: stop, naming them
    steps_per_epoch: int = 50  # batches per epoch, the same on every rank
    shuffle_buffer: int = 64  # webdataset sample shuffle buffer
    cache: bool = True  # keep decoded samples in memory (one copy per rank and one per worker)
    on_corrupt: str = "error"  # error | skip: what a bad sample does
    fold: int = -1  # k-fold shards: validate on fold i, train on the others (-1 = off)
    aug: AugConfig = field(default_factory=AugConfig)  # training augmentation

    def check(self, p: str) -> None:
        _one_of(f"{p}.channels", self.channels, ("rgb", "green", "gray"))
        self.normalize = _enum(f"{p}.normalize", self.normalize, ("zscore", "unit", "none"),
                               false_means="none")
        _one_of(f"{p}.on_corrupt", self.on_corrupt, ("error", "skip"))
        _require(self.gamma > 0, f"{p}.gamma", self.gamma, "> 0")
        _require(self.crop >= 0, f"{p}.crop", self.crop, ">= 0")
        _require(self.resize >= 0, f"{p}.resize", self.resize, ">= 0")
        _require(0.05 < self.scale <= 4, f"{p}.scale", self.scale, "a factor in (0.05, 4]")
        _require(self.resize == 0 or self.scale == 1.0, f"{p}.scale", self.scale,
                 f"1.0 with data.resize={self.resize} (choose one way to rescale)")
        _require(0 <= self.crop_in_fov <= 1, f"{p}.crop_in_fov", self.crop_in_fov, "in [0, 1]")
        _require(0 <= self.crop_class_bias <= 1, f"{p}.crop_class_bias", self.crop_class_bias,
                 "in [0, 1]")
        _require(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, ">= 1")
        _require(self.num_workers >= 0, f"{p}.num_workers", self.num_workers, ">= 0")
        _require(self.stall_seconds > 0, f"{p}.stall_seconds", self.stall_seconds, "> 0")
        _require(self.steps_per_epoch >= 1, f"{p}.steps_per_epoch", self.steps_per_epoch, ">= 1")
        _require(self.shuffle_buffer >= 1, f"{p}.shuffle_buffer", self.shuffle_buffer, ">= 1")
        _require(self.stage_timeout > 0, f"{p}.stage_timeout", self.stage_timeout, "> 0")
        _require(self.fold >= -1, f"{p}.fold", self.fold, "-1 (off) or a fold index >= 0")
        self.aug.check(f"{p}.aug")
        for f, bound in (("crop", MAX_SIDE), ("resize", MAX_SIDE), ("batch_size", MAX_BATCH),
                         ("num_workers", 256), ("shuffle_buffer", 100_000)):
            _at_most(f"{p}.{f}", getattr(self, f), bound)

    @property
    def in_channels(self) -> int:
        return 3 if self.channels == "rgb" else 1


@dataclass
class ModelConfig:
    """The network. Architecture fields must match when resuming; runtime switches may change."""

    name: str = "unet"  # unet | timm_unet | smp (segmentation_models_pytorch, optional extra)
    in_channels: int = 0  # input channels (0 = derived from data.channels)
    num_classes: int = 1  # output channels (1 = binary vessel logit)
    width: int = 64  # base channel count of the classic UNet (the seed used 64)
    depth: int = 4  # number of down/up stages of the classic UNet
    bilinear: bool = True  # bilinear upsampling (True) or transposed convolutions
    norm: str = "batch"  # batch | group | instance
    dropout: float = 0.0  # dropout probability in the bottleneck
    encoder: str = "resnet34"  # encoder: timm name (timm_unet); smp name or tu-<timm name> (smp)
    arch: str = "Unet"  # smp architecture: Unet | UnetPlusPlus | FPN | DeepLabV3Plus | Segformer..
    encoder_levels: int = 0  # timm_unet: finest encoder feature levels used (0 = all it has)
    decoder_width: int = 16  # timm_unet decoder channels at full size, doubled per halving
    # local weights: encoder (timm_unet, smp) or a full checkpoint (unet); never downloaded
    pretrained_path: str | None = None
    channels_last: bool = False  # use channels_last memory format (runtime switch)
    compile: bool = False  # torch.compile the model (runtime switch), after DDP wrapping
    # torch.compile backend: inductor (fast kernels) | aot_eager | eager (debugging, CPU tests)
    compile_backend: str = "inductor"
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP (GPU only)

    RUNTIME_FIELDS = ("pretrained_path", "channels_last", "compile", "compile_backend",
                      "sync_bn")

    def check(self, p: str) -> None:
        _one_of(f"{p}.name", self.name, registered("model"))
        _one_of(f"{p}.norm", self.norm, ("batch", "group", "instance"))
        _require(self.in_channels >= 0, f"{p}.in_channels", self.in_channels, ">= 0")
        _require(self.num_classes >= 1, f"{p}.num_classes", self.num_classes, ">= 1")
        _require(self.width >= 1, f"{p}.width", self.width, ">= 1")
        _require(1 <= self.depth <= 6, f"{p}.depth", self.depth, "in [1, 6]")
        _require(0 <= self.dropout < 1, f"{p}.dropout", self.dropout, "in [0, 1)")
        _require(self.encoder_levels >= 0, f"{p}.encoder_levels", self.encoder_levels, ">= 0")
        if self.name == "smp":  # smp is optional: only then are its names asked for
            check_smp_arch(self.arch)
        _require(self.decoder_width >= 1, f"{p}.decoder_width", self.decoder_width, ">= 1")
        _one_of(f"{p}.compile_backend", self.compile_backend, ("inductor", "aot_eager", "eager"))
        for f, bound in (("width", MAX_WIDTH), ("decoder_width", MAX_WIDTH), ("in_channels", 16),
                         ("num_classes", 256), ("encoder_levels", 8)):
            _at_most(f"{p}.{f}", getattr(self, f), bound)
        _require(self.name != "unet" or self.width * 2**self.depth <= MAX_BOTTLENECK,
                 f"{p}.width", self.width, f"<= {MAX_BOTTLENECK // 2**self.depth} with "
                 f"model.depth={self.depth} (the UNet's deepest stage has width * 2**depth "
                 f"channels, at most {MAX_BOTTLENECK})")

    def architecture(self) -> dict:
        """The fields that define the weights' shapes; a resume must match them."""
        d = dataclasses.asdict(self)
        if self.name != "smp":  # only smp reads it; checkpoints from before it existed resume
            d.pop("arch")
        return {k: v for k, v in d.items() if k not in self.RUNTIME_FIELDS}


@dataclass
class LossConfig:
    """Training loss, computed inside the FOV."""

    name: str = "bce_dice"  # bce | dice | bce_dice | cldice | ce | ce_dice | multilabel_bce_dice
    pos_weight: float = 1.0  # BCE weight of the vessel class
    dice_weight: float = 1.0  # weight of the Dice term in bce_dice / cldice / ce_dice / multilabel
    cldice_weight: float = 0.5  # weight of the clDice term in cldice
    cldice_iters: int = 3  # soft-skeleton iterations
    # ce/ce_dice: one weight per class; multilabel_bce_dice: per-channel pos_weight ([] = none)
    class_weights: list[float] = field(default_factory=list)
    ignore_index: int | None = None  # label value that adds no loss (e.g. 255; null = none)

    def check(self, p: str) -> None:
        _one_of(f"{p}.name", self.name, registered("loss"))
        _require(self.pos_weight > 0, f"{p}.pos_weight", self.pos_weight, "> 0")
        _require(self.dice_weight >= 0, f"{p}.dice_weight", self.dice_weight, ">= 0")
        _require(self.cldice_weight >= 0, f"{p}.cldice_weight", self.cldice_weight, ">= 0")
        _require(self.cldice_iters >= 1, f"{p}.cldice_iters", self.cldice_iters, ">= 1")
        _at_most(f"{p}.cldice_iters", self.cldice_iters, 100)
        w = list(self.class_weights)
        _at_most(f"{p}.class_weights length", len(w), 256)  # labels are 8-bit class indices
        # OmegaConf lets a nested list or mapping through as an element: name the field anyway
        _require(all(isinstance(v, (int, float)) and 0 <= v < math.inf for v in w),
                 f"{p}.class_weights", w, "finite weights >= 0")
        _require(not w or any(v > 0 for v in w), f"{p}.class_weights", w, "a list with a weight > 0")
        if self.ignore_index is not None:
            _require(0 <= self.ignore_index <= 255, f"{p}.ignore_index", self.ignore_index,
                     "in [0, 255] (an 8-bit label value) or null")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: str = "adamw"  # adam | adamw | sgd
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-4  # weight decay
    momentum: float = 0.9  # SGD momentum
    schedule: str = "cosine"  # constant | cosine | poly
    warmup_steps: int = 0  # linear warm-up steps
    min_lr_ratio: float = 0.0  # final lr as a fraction of lr (cosine/poly)
    poly_power: float = 0.9  # exponent of the poly schedule
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    schedule_by: str = "steps"  # steps | time: decay over max_steps or over train.max_minutes

    def check(self, p: str) -> None:
        _one_of(f"{p}.name", self.name, registered("optimizer"))
        _one_of(f"{p}.schedule", self.schedule, registered("schedule"))
        _one_of(f"{p}.schedule_by", self.schedule_by, ("steps", "time"))
        _require(self.lr > 0, f"{p}.lr", self.lr, "> 0")
        _require(self.weight_decay >= 0, f"{p}.weight_decay", self.weight_decay, ">= 0")
        _require(0 <= self.momentum < 1, f"{p}.momentum", self.momentum, "in [0, 1)")
        _require(self.warmup_steps >= 0, f"{p}.warmup_steps", self.warmup_steps, ">= 0")
        _require(0 <= self.min_lr_ratio <= 1, f"{p}.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        _require(self.poly_power > 0, f"{p}.poly_power", self.poly_power, "> 0")
        _require(self.grad_clip >= 0, f"{p}.grad_clip", self.grad_clip, ">= 0")


@dataclass
class TrainConfig:
    """The training loop."""

    run_dir: str = ""  # where everything is written (default runs/<config file stem>)
    max_steps: int = 1000  # optimizer steps in total
    max_minutes: float = 0.0  # training-time budget (steps only, not start-up/validation; 0 = off)
    precision: str = "no"  # no | bf16 | fp16 (fp16 needs CUDA) | auto (bf16 if the device has it)
    grad_accum: int = 1  # gradient accumulation steps
    eval_every: int = 200  # validate every N steps (0 = only at the end)
    log_every: int = 10  # log train scalars every N steps (and every log_seconds)
    resume: str = "auto"  # auto | none | <checkpoint path> (no/off/false mean none)
    max_skipped_steps: int = 10  # consecutive fp16 scaler skips tolerated
    ema_decay: float = 0.0  # keep an EMA of the weights with this decay, e.g. 0.999 (0 = off)
    progress: bool = True  # show the tqdm bar on rank 0
    log_seconds: float = 30.0  # without a terminal (SLURM .out, CI): a progress line every N s
    cudnn_benchmark: bool = True  # let cuDNN pick the fastest conv algorithms (fixed shapes)
    tf32: bool = True  # TF32 tensor cores for fp32 matmul/conv on Ampere+ (precision=no)

    def check(self, p: str) -> None:
        self.precision = _enum(f"{p}.precision", self.precision, registered("precision"),
                               false_means="no")
        _require(self.max_steps >= 1, f"{p}.max_steps", self.max_steps, ">= 1")
        _require(self.max_minutes >= 0, f"{p}.max_minutes", self.max_minutes, ">= 0")
        _require(self.grad_accum >= 1, f"{p}.grad_accum", self.grad_accum, ">= 1")
        _require(self.eval_every >= 0, f"{p}.eval_every", self.eval_every, ">= 0")
        _require(self.log_every >= 1, f"{p}.log_every", self.log_every, ">= 1")
        _require(self.log_seconds > 0, f"{p}.log_seconds", self.log_seconds, "> 0")
        _require(bool(self.resume), f"{p}.resume", self.resume, "auto|none|<path>")
        if self.resume in _FALSE_SPELLINGS:  # YAML's `resume: no` / `off`
            self.resume = "none"
        _require(0 <= self.ema_decay < 1, f"{p}.ema_decay", self.ema_decay,
                 "in [0, 1) (0 = off)")
        _require(self.max_skipped_steps >= 0, f"{p}.max_skipped_steps",
                 self.max_skipped_steps, ">= 0")


@dataclass
class EvalConfig:
    """Sliding-window evaluation and metrics."""

    split: str = "val"  # split used for validation during training
    tile: int = 256  # sliding-window tile size in px (0 = the whole image in one window)
    overlap: float = 0.25  # fraction of overlap between tiles
    # probability threshold for the binary prediction; auto: the F1-optimal threshold on the
    # validation split, chosen by training and stored in best/metrics.json (0.5 until then)
    threshold: float | int | str = 0.5
    tta: str = "none"  # none | flip (4 flips; true = flip) | dihedral (8: flips x 90 deg turns)
    batch_size: int = 4  # tiles per forward pass
    auc_bins: int = 10000  # histogram bins for AUC-ROC / AUC-PR
    num_overlays: int = 4  # overlay figures written per evaluation
    resize: int = -1  # infer at N x N, resized back (-1 = data.resize, the training scale; 0 = native)
    # rescale test images by this factor before inference, probabilities back to native size;
    # auto: ref_fov_diameter / the test image's FOV diameter (cross-dataset evaluation)
    scale: float | int | str = 1.0
    # FOV diameter (px) of the training images, for scale=auto (0 = unknown; train fills it in
    # from the training manifest)
    ref_fov_diameter: float = 0.0

    def check(self, p: str) -> None:
        self._check_scale(p)
        _one_of(f"{p}.split", self.split, ("train", "val", "test"))
        self.tta = tta_mode(self.tta)  # old configs: true/false
        _one_of(f"{p}.tta", self.tta, registered("tta"))
        _require(self.tile == 0 or self.tile >= 16, f"{p}.tile", self.tile,
                 "0 (whole image) or >= 16")
        _require(0 <= self.overlap < 1, f"{p}.overlap", self.overlap, "in [0, 1)")
        self._check_threshold(p)
        _require(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, ">= 1")
        _require(self.auc_bins >= 100, f"{p}.auc_bins", self.auc_bins, ">= 100")
        _require(self.num_overlays >= 0, f"{p}.num_overlays", self.num_overlays, ">= 0")
        _require(self.resize == -1 or self.resize == 0 or self.resize >= 16, f"{p}.resize",
                 self.resize, "-1 (as data.resize), 0 (native) or >= 16")
        _require(self.ref_fov_diameter >= 0, f"{p}.ref_fov_diameter", self.ref_fov_diameter,
                 ">= 0")
        for f, bound in (("tile", MAX_SIDE), ("resize", MAX_SIDE), ("batch_size", MAX_BATCH),
                         ("auc_bins", 10**7), ("ref_fov_diameter", MAX_SIDE)):
            _at_most(f"{p}.{f}", getattr(self, f), bound)

    def _check_threshold(self, p: str) -> None:
        """Normalise eval.threshold to a float in (0, 1) or "auto"."""
        value = self.threshold
        if isinstance(value, str) and value != "auto":
            try:
                value = float(value)
            except ValueError:
                pass
        ok = value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                 and 0 < value < 1)
        _require(ok, f"{p}.threshold", self.threshold, "in (0, 1) or 'auto'")
        self.threshold = value if value == "auto" else float(value)

    def _check_scale(self, p: str) -> None:
        """Normalise eval.scale to a float or "auto" (YAML may hand over "0.5" or 2)."""
        value = self.scale
        if isinstance(value, str) and value != "auto":
            try:
                value = float(value)
            except ValueError:
                pass
        ok = value == "auto" or (isinstance(value, (int, float)) and 0.05 <= value <= 20)
        _require(ok, f"{p}.scale", self.scale, "a factor in [0.05, 20] or 'auto'")
        self.scale = value if value == "auto" else float(value)


@dataclass
class WandbConfig:
    """Weights & Biases (rank 0 only; WANDB_* environment variables fill unset fields)."""

    mode: str = "auto"  # auto (online with an API key, else offline) | online | offline | disabled
    project: str | None = None  # W&B project (default WANDB_PROJECT or "unetdist")
    entity: str | None = None  # W&B entity (default WANDB_ENTITY)
    name: str | None = None  # run name (default: run_dir's name)
    group: str | None = None  # run group
    tags: list[str] = field(default_factory=list)  # run tags
    log_model: bool = False  # upload the best model as an artifact
    log_images: int = 4  # validation images logged with masks

    def check(self, p: str) -> None:
        self.mode = _enum(f"{p}.mode", self.mode, ("auto", "online", "offline", "disabled"),
                          false_means="disabled")
        _require(self.log_images >= 0, f"{p}.log_images", self.log_images, ">= 0")


@dataclass
class TrackConfig:
    """Experiment tracking (local JSONL is always on)."""

    wandb: WandbConfig = field(default_factory=WandbConfig)  # Weights & Biases settings

    def check(self, p: str) -> None:
        self.wandb.check(f"{p}.wandb")


@dataclass
class CheckpointConfig:
    """When to checkpoint and how many to keep."""

    every_steps: int = 500  # checkpoint every N steps (0 = off)
    every_minutes: float = 0.0  # and/or every N minutes of wall time (0 = off)
    keep_last: int = 2  # checkpoints kept (>= 2, pruned after the new one is complete)

    def check(self, p: str) -> None:
        _require(self.every_steps >= 0, f"{p}.every_steps", self.every_steps, ">= 0")
        _require(self.every_minutes >= 0, f"{p}.every_minutes", self.every_minutes, ">= 0")
        _require(self.keep_last >= 2, f"{p}.keep_last", self.keep_last, ">= 2")


@dataclass
class DistConfig:
    """The process group and DDP (ignored in a single process)."""

    timeout_s: float = 1800.0  # collective timeout in seconds (NCCL's default is 600)
    grad_compression: str = "none"  # none | bf16: compress gradient all-reduce to bf16 (CUDA)
    bucket_mb: int = 25  # DDP gradient bucket size in MiB

    def check(self, p: str) -> None:
        _require(self.timeout_s >= 10, f"{p}.timeout_s", self.timeout_s, ">= 10")
        _one_of(f"{p}.grad_compression", self.grad_compression, ("none", "bf16"))
        _require(self.bucket_mb >= 1, f"{p}.bucket_mb", self.bucket_mb, ">= 1")
