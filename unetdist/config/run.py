"""`RunConfig`: the whole run as one tree of the sections, and the checks across sections.

`__post_init__` validates every section (`check(name)`) and then the rules that tie two
sections together, so a config is validated once, whether it was loaded or built in code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unetdist.config.checks import _require
from unetdist.config.names import loss_output
from unetdist.config.sections import (
    CheckpointConfig,
    DataConfig,
    DistConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrackConfig,
    TrainConfig,
)

SECTIONS = ("data", "model", "loss", "optim", "train", "eval", "track", "checkpoint", "dist")


@dataclass
class RunConfig:
    """The whole run. Each builder receives only its section."""

    seed: int = 0  # global seed; per-rank/worker seeds derive from it
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _require(self.seed >= 0, "seed", self.seed, ">= 0")
        for name in SECTIONS:
            getattr(self, name).check(name)
        _require(self.optim.schedule_by == "steps" or self.train.max_minutes > 0,
                 "optim.schedule_by", self.optim.schedule_by, "steps when train.max_minutes=0 "
                 "(a time schedule needs a time budget)")
        if self.model.in_channels == 0:
            self.model.in_channels = self.data.in_channels
        if self.eval.scale == 1.0 and self.data.scale != 1.0:  # score at the trained scale
            self.eval.scale = self.data.scale
        if self.eval.resize == -1:  # a model trained on resized images is scored at that scale
            self.eval.resize = self.data.resize
        _require(self.eval.resize == 0 or self.eval.scale == 1.0, "eval.scale", self.eval.scale,
                 f"1.0 with eval.resize={self.eval.resize} (choose one way to rescale)")
        _require(self.model.in_channels == self.data.in_channels, "model.in_channels",
                 self.model.in_channels, f"{self.data.in_channels} for data.channels="
                 f"{self.data.channels}")
        self._check_loss_outputs()

    def _check_loss_outputs(self) -> None:
        """The loss and the model's output channels must agree before anything is built: a
        mismatch would otherwise surface at the first step, or not at all (a binary loss would
        ignore class weights)."""
        k, loss = self.model.num_classes, self.loss
        output = loss_output(loss.name)
        if output == "sigmoid":
            _require(k == 1, "model.num_classes", k, f"1 for loss.name={loss.name} (one vessel "
                     "logit); a softmax model over K classes trains with loss.name=ce or ce_dice")
            _require(not loss.class_weights, "loss.class_weights", list(loss.class_weights),
                     f"empty for loss.name={loss.name} (its positive weight is loss.pos_weight)")
            _require(loss.ignore_index is None, "loss.ignore_index", loss.ignore_index,
                     f"null for loss.name={loss.name} (binary labels have no ignore value)")
            return
        if output == "softmax":
            _require(k >= 2, "model.num_classes", k, f">= 2 for loss.name={loss.name} (one "
                     "logit per class; a binary vessel model is 2 classes)")
        _require(not loss.class_weights or len(loss.class_weights) == k, "loss.class_weights",
                 list(loss.class_weights), f"one weight per output channel (model.num_classes="
                 f"{k}) or empty")
