"""Sample ids: the one rule for shard keys, applied by `shard` when it names samples and by every
reader before a key is used.

A key becomes file names (`predictions/<id>.png`, `plots/overlay_<id>.png`), so a shard that
someone else wrote must not choose them: `../x` or `/home/u/x` would put files outside the
output folder. Keys are plain, bounded names, unique within a shard.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from unetdist.errors import DataError

MAX_ID_CHARS = 128  # a file name with "_prob.png" and a temporary suffix stays under 255 bytes
ID_RE = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_ID_CHARS}}}$")
ID_RULE = f"only A-Z a-z 0-9 _ -, at most {MAX_ID_CHARS} characters"


def is_sample_id(key: object) -> bool:
    return isinstance(key, str) and ID_RE.match(key) is not None


def _shown(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def checked_keys(raws: Iterable[dict], shard: str) -> Iterator[dict]:
    """RAWS (webdataset samples) unchanged; DataError at the first key that is not a sample id
    or repeats one, naming the shard."""
    seen: set[str] = set()
    for raw in raws:
        key = raw.get("__key__")
        if not is_sample_id(key):
            raise DataError(f"shard {shard}: sample key {_shown(key)} is not a sample id "
                            f"({ID_RULE}); not written by `unetdist shard`, nothing was used: "
                            "rewrite the shards")
        if key in seen:
            raise DataError(f"shard {shard}: sample key {key!r} appears twice; rewrite the shards")
        seen.add(key)
        yield raw
