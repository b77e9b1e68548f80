"""Weights & Biases tracker (rank 0 only), behind the same tiny interface as the JSONL tracker.

Why it looks the way it does:
- The mode is decided here, never by a login prompt: `auto` is online only when an API key is
  configured (env or netrc) and the W&B host answers; otherwise offline (compute nodes often
  have no internet), and the `wandb sync` command to upload later is printed.
- Every record carries `train/step` and every metric is charted against it
  (`define_metric`), so wandb's own step counter never matters: after a resume nothing is
  dropped for being "out of order". Steps this W&B run already holds are skipped (high-water
  mark per split in run_dir/wandb_state.json, saved by `finish`), so nothing is duplicated;
  after a hard crash (no `finish`) the replayed steps are logged again rather than lost.
- The run id lives in run_dir/wandb_run_id from the first moment, so a requeued job (or a
  checkpoint carrying the id) continues the same W&B run.
- No secret reaches W&B: key-looking values are scrubbed from the config before it is sent.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from unetdist.atomic import inside, write_atomic
from unetdist.config import WandbConfig
from unetdist.errors import ConfigError, UserError
from unetdist.log import say

RUN_ID_FILE = "wandb_run_id"
STATE_FILE = "wandb_state.json"
STEP_METRIC = "train/step"
MASKS_KEY = "val/predictions"
DEFAULT_PROJECT = "unetdist"
DEFAULT_BASE_URL = "https://api.wandb.ai"
REDACTED = "<redacted>"
# One id space for all mask layers: wandb merges the layers' class labels into one table.
VESSEL_LABELS = {0: "background", 1: "vessel"}
FOV_LABELS = {0: "background", 2: "FOV"}

_SECRET_NAME = re.compile(r"(api[_-]?key|apikey|token|secret|passw(or)?d|credential)", re.IGNORECASE)
# Legacy keys are 40 hex digits (like git hashes, which are exempt by their key name); newer
# ones carry a prefix.
_SECRET_VALUE = re.compile(r"\b(?:[0-9a-f]{40}|(?:local|wandb_v\d+)[-_][\w-]{20,})\b")
_HASH_NAME = re.compile(r"(git|commit|sha|hash|digest)", re.IGNORECASE)
_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "GITHUB_TOKEN")


# ----------------------------------------------------------------------------- mode and secrets


# Only public interfaces here (stdlib netrc/configparser and the files wandb documents): wandb's
# internal modules move between releases.


def _base_url() -> str:
    """The W&B host wandb will talk to: WANDB_BASE_URL, else `wandb login --host`'s setting
    (base_url in the [default] section of $WANDB_CONFIG_DIR/settings)."""
    import configparser

    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb"
    parser = configparser.ConfigParser()
    try:
        parser.read(Path(config_dir) / "settings")
        return parser.get("default", "base_url", fallback=None) or DEFAULT_BASE_URL
    except (configparser.Error, OSError, UnicodeDecodeError):  # a file wandb could not parse
        return DEFAULT_BASE_URL


def api_key_configured(base_url: str | None = None) -> bool:
    """True when wandb would find credentials without prompting (env or netrc entry)."""
    import netrc

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    host = urlsplit(base_url or _base_url()).hostname or ""
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):  # no or malformed netrc: wandb would find no key
        return False
    return entry is not None and bool(entry[2])


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the W&B host? Behind a proxy we cannot tell: assume so."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(cfg: WandbConfig) -> str:
    """online | offline | disabled. Never leads to an interactive login."""
    mode = cfg.mode
    if mode == "auto":
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
            env = "disabled"
        mode = {"dryrun": "offline", "run": "online"}.get(env, env)
        if mode not in ("online", "offline", "disabled"):
            url = _base_url()
            online = api_key_configured(url) and _reachable(url)
            mode = "online" if online else "offline"
    if mode == "online" and not api_key_configured():
        raise ConfigError("W&B online mode (track.wandb.mode or WANDB_MODE) needs an API key "
                          "(set WANDB_API_KEY or run `wandb login`); or use "
                          "track.wandb.mode=offline")
    return mode


def _secret_values() -> list[str]:
    return [v for k in _SECRET_ENV if (v := os.environ.get(k)) and len(v) >= 8]


def scrub(obj: Any, secrets: list[str] | None = None, _name: str = "") -> Any:
    """Copy of a config tree with secret-named keys and key-looking values redacted."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: (REDACTED if _SECRET_NAME.search(str(k)) and v not in (None, "")
                    else scrub(v, secrets, str(k))) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v, secrets, _name) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, REDACTED)
        return obj if _HASH_NAME.search(_name) else _SECRET_VALUE.sub(REDACTED, obj)
    return obj


def _runtime_fields(config: dict) -> dict:
    """SLURM job id and world size (from the config when the caller put them there)."""
    env = os.environ
    out = {"world_size": config.get("world_size") or int(env.get("WORLD_SIZE", "1"))}
    job = config.get("slurm_job_id") or env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    out["slurm_job_id"] = job
    if env.get("SLURM_RESTART_COUNT"):
        out["slurm_restart_count"] = int(env["SLURM_RESTART_COUNT"])
    return out


# ----------------------------------------------------------------------------- metrics


def _scalar(v: Any) -> float | int | None:
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):  # NaN/inf included: a diverging loss is worth seeing
        return v
    return None


def wandb_metrics(metrics: dict, step: int) -> tuple[str, dict]:
    """(split, {"split/key": number, ..., "train/step": step}) from a JSONL-style record.

    Keys that already hold a '/' are kept; nested dicts (e.g. counts) are flattened; values
    that are not numbers (strings, lists) are left to the JSONL log.
    """
    split = str(metrics.get("split", "train"))
    out: dict[str, float | int] = {}

    def put(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if k in ("split", "step") and prefix == split:
                continue
            name = str(k) if "/" in str(k) else f"{prefix}/{k}"
            if isinstance(v, dict):
                put(name, v)
            elif (x := _scalar(v)) is not None:
                out[name] = x

    put(split, metrics)
    out[STEP_METRIC] = int(step)
    return split, out


def _mask(a: np.ndarray, name: str, binary: bool = True) -> np.ndarray:
    a = np.asarray(a)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 2:
        raise ValueError(f"{name} mask must be (H, W), got shape {a.shape}")
    return (a > 0).astype(np.uint8) if binary else a.astype(np.uint8)


# ----------------------------------------------------------------------------- run dir state


def _read_run_id(run_dir: Path) -> str | None:
    p = run_dir / RUN_ID_FILE
    rid = p.read_text().strip() if p.is_file() else ""
    return rid if re.fullmatch(r"[A-Za-z0-9_-]+", rid) else None


def _read_high_water(run_dir: Path, run_id: str) -> dict[str, int]:
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if state.get("run_id") != run_id:
        return {}
    return {str(k): int(v) for k, v in state.get("last_step", {}).items()}


# ----------------------------------------------------------------------------- the tracker


class WandbTracker:
    """Rank-0 W&B run for one run_dir: `log(metrics, step)`, `log_masks`, `log_model`, `finish`.

    With mode `disabled` every method is a no-op and nothing is written or imported.
    """

    wants_masks = True  # W&B's mask viewer shows validation predictions

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict, *,
                 resume_id: str | None = None, new_run: bool = False) -> None:
        """`resume_id`: the id stored in the checkpoint being resumed. Without it the id in
        run_dir/wandb_run_id is continued (a requeued job that died before its first
        checkpoint), unless `new_run` (train.resume=none: a fresh start in an old run_dir)."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.mode = resolve_mode(cfg)
        self._run = None
        self._run_id: str | None = None
        self._high_water: dict[str, int] = {}
        if self.mode == "disabled":
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_id is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", resume_id):
            raise ConfigError(f"W&B run id to resume must be [A-Za-z0-9_-]+, got {resume_id!r}")
        previous = None if new_run else _read_run_id(self.run_dir)
        self._run_id = resume_id or previous or _new_run_id()
        # Written before wandb starts: a job killed during init still resumes the same run.
        write_atomic(self.run_dir / RUN_ID_FILE, self._run_id + "\n")
        self._high_water = _read_high_water(self.run_dir, self._run_id)
        self._run = self._init_run(config)
        self._adopt_assigned_id()
        if self.mode == "offline":
            say(f"wandb: offline run {self._run_id} in {self._run.settings.sync_dir}; "
                "the upload command is printed at the end", file=sys.stderr)

    def _adopt_assigned_id(self) -> None:
        """Inside a sweep (or W&B launch) wandb ignores the id we pass and uses the one its
        agent assigned (WANDB_RUN_ID): that is the run's id from here on, so the checkpoint,
        run_dir/wandb_run_id and the `wandb sync` command name the run that holds the data."""
        assigned = getattr(self._run, "id", None)
        if not assigned or assigned == self._run_id:
            return
        self._run_id = assigned
        write_atomic(self.run_dir / RUN_ID_FILE, assigned + "\n")
        self._high_water = _read_high_water(self.run_dir, assigned)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def active(self) -> bool:
        return self._run is not None

    def _init_run(self, config: dict):
        import wandb

        env = os.environ
        tags = list(self.cfg.tags) or [t for t in env.get("WANDB_TAGS", "").split(",") if t]
        full = scrub({**config, **_runtime_fields(config)})
        settings = wandb.Settings(allow_val_change=True)
        try:
            run = wandb.init(
                dir=str(self.run_dir), id=self._run_id, resume="allow", mode=self.mode,
                project=self.cfg.project or env.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                entity=self.cfg.entity or env.get("WANDB_ENTITY") or None,
                name=self.cfg.name or env.get("WANDB_NAME") or self.run_dir.resolve().name,
                group=self.cfg.group or env.get("WANDB_RUN_GROUP") or None,
                tags=tags or None, config=full, settings=settings)
        except wandb.Error as e:
            raise UserError(f"W&B {self.mode} start failed ({str(e).splitlines()[0]}); "
                            "use track.wandb.mode=offline") from None
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)
        return run

    def _fresh(self, split: str, step: int) -> bool:
        """False for a step this W&B run already holds (replayed after a resume)."""
        if step <= self._high_water.get(split, -1):
            return False
        self._high_water[split] = step
        return True

    def log(self, metrics: dict, step: int) -> None:
        """Scalars of one JSONL-style record ({"split": "val", "dice": ...}) at a training step."""
        if self._run is None:
            return
        split, data = wandb_metrics(metrics, step)
        if len(data) > 1 and self._fresh(split, step):
            self._run.log(data)

    def log_masks(self, images: list[dict], step: int) -> None:
        """Validation images with toggleable prediction / ground truth / FOV mask layers.

        Each dict: key, rgb (H,W,3 uint8), pred, label, fov (H,W in {0,1}); with
        `class_labels` ({index: name}), pred and label are class-index maps.
        """
        if (self._run is None or not images or self.cfg.log_images == 0
                or not self._fresh("media", step)):
            return
        import wandb

        panel = []
        for im in images[: self.cfg.log_images]:
            labels = im.get("class_labels")  # a multi-class map keeps its class indices
            binary = labels is None
            masks = {
                "prediction": {"mask_data": _mask(im["pred"], "pred", binary),
                               "class_labels": labels or VESSEL_LABELS},
                "ground_truth": {"mask_data": _mask(im["label"], "label", binary),
                                 "class_labels": labels or VESSEL_LABELS},
                "fov": {"mask_data": _mask(im["fov"], "fov") * 2, "class_labels": FOV_LABELS},
            }
            rgb = np.ascontiguousarray(np.asarray(im["rgb"], dtype=np.uint8))
            panel.append(wandb.Image(rgb, masks=masks, caption=str(im.get("key", ""))))
        self._run.log({STEP_METRIC: int(step), MASKS_KEY: panel})

    def log_model(self, best_dir: Path, *, aliases: list[str] | None = None) -> None:
        """Upload run_dir/best/ as a `model` artifact (only when track.wandb.log_model)."""
        if self._run is None or not self.cfg.log_model:
            return
        import wandb

        best_dir = Path(best_dir)
        try:
            meta = json.loads((best_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            meta = {}
        art = wandb.Artifact(f"model-{self._run_id}", type="model", metadata=scrub(meta))
        for p in sorted(best_dir.iterdir()):  # regular files only: a link out is not uploaded
            if p.is_file() and not p.is_symlink():
                art.add_file(str(inside(best_dir, p.name)), name=p.name)
        names = ["best", "latest"] + ([f"step-{meta['step']}"] if "step" in meta else [])
        self._run.log_artifact(art, aliases=aliases or names)

    def sync_command(self) -> str | None:
        """`wandb sync ...` for every offline folder of this run id (a resumed run has several;
        wandb syncs them in start-time order)."""
        if self.mode != "offline" or self._run_id is None:
            return None
        # Folder names start with the start time; a same-second restart gets a "-1" suffix.
        dirs = sorted(d for d in (self.run_dir / "wandb").glob("offline-run-*")
                      if (d / f"run-{self._run_id}.wandb").is_file())
        return "wandb sync " + " ".join(str(d) for d in dirs) if dirs else None

    def finish(self, exit_code: int = 0) -> None:
        if self._run is None:
            return
        import wandb

        run, self._run = self._run, None
        run.finish(exit_code=exit_code)
        # run.finish() returns before wandb-core has flushed the run file; teardown waits.
        wandb.teardown()
        # Saved only once W&B holds the data: after a hard crash (no finish) replayed steps
        # are logged again (a duplicate point at worst), never skipped into a gap.
        state = {"run_id": self._run_id, "last_step": self._high_water}
        write_atomic(self.run_dir / STATE_FILE, json.dumps(state) + "\n")
        if (cmd := self.sync_command()) is not None:
            say(f"wandb: offline run saved; upload it later with:\n  {cmd}", file=sys.stderr)


def _new_run_id() -> str:
    """8 random lowercase letters and digits, the form of wandb's own run ids."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
