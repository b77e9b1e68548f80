"""Deterministic tar shards: identical members give byte-identical files.

We write tars with Python's tarfile ourselves because webdataset's TarWriter stamps members
with the current time. Every header has mtime 0, uid/gid 0, empty user/group names, mode 0o644.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # tar files are padded to a multiple of this


def member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def member_bytes(data: bytes) -> int:
    """Bytes a member takes in the archive: one header block plus padded data."""
    return BLOCK + -(-len(data) // BLOCK) * BLOCK


class TarShard:
    """One tar shard being written; `close()` returns (bytes, sha256 of the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples = 0
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close() or abort())
        self._tar = tarfile.open(  # noqa: SIM115 (closed by close())
            fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)

    @property
    def offset(self) -> int:
        return self._tar.offset

    def size_with(self, members: list[tuple[str, bytes]]) -> int:
        """The final file size if `members` were added and the shard then closed."""
        end = self.offset + sum(member_bytes(d) for _, d in members) + 2 * BLOCK
        return -(-end // RECORD) * RECORD

    def add(self, members: list[tuple[str, bytes]]) -> None:
        for name, data in members:
            self._tar.addfile(member_info(name, len(data)), io.BytesIO(data))
        self.samples += 1

    def close(self) -> tuple[int, str]:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self.path.stat().st_size, file_sha256(self.path)

    def abort(self) -> None:
        self._file.close()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
