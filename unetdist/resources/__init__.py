"""Files shipped inside the package: experiment configs and launch files.

`unetdist demo` and `unetdist bench` find their configs here, so they work from any directory
after a plain (non-editable) `pip install`. In the source tree `configs` and `launch` here are
links to the repository's top-level folders, which stay the place to edit them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from unetdist.errors import UserError


def resource(*parts: str) -> Path:
    """The path of a shipped file, e.g. resource("configs", "demo.yaml")."""
    path = Path(str(files(__name__).joinpath(*parts)))
    if not path.exists():
        raise UserError(f"{'/'.join(parts)} is missing from the installed package ({path}); "
                        "reinstall unetdist or pass the file explicitly")
    return path
