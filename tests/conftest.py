import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    """Keep a user's accelerate/HF config and W&B credentials out of every test."""
    home = tmp_path_factory.mktemp("hf_home")
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "WANDB_MODE", "WANDB_DIR")}
    os.environ["HF_HOME"] = str(home)
    os.environ.setdefault("WANDB_MODE", "disabled")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
