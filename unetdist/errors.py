"""Errors a user can cause. The CLI prints them as one line and exits with their status."""


def one_line(text: str) -> str:
    """TEXT with its control characters escaped (newline, CR, NUL, line separators): a message
    that quotes a value from a hostile file or spec must stay one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UserError(Exception):
    """Bad input from the user (path, data, config): one clear line, exit status 2.

    Under a launcher every rank usually raises the same one, so only global rank 0 prints it.
    `node_local` marks a problem of one node (its staging): that node's first process prints
    it too, or a job whose other node failed would end without saying why.
    """

    exit_code = 2
    node_local = False


class ConfigError(UserError):
    """An invalid config value, type or key; the message names the dotted field."""


class DataError(UserError):
    """Unusable input data (missing, unreadable, inconsistent files or shards)."""


class FileSystemError(UserError):
    """A folder the user chose cannot be written: read-only, permissions, full, a file."""

    @classmethod
    def of(cls, e: OSError, path: object, doing: str, setting: str = "") -> "FileSystemError":
        """'cannot DOING PATH (SETTING): why; remedy' for an OSError raised while writing."""
        import errno

        no = e.errno
        if no == errno.EROFS:
            why = "read-only file system; choose a writable folder"
        elif no in (errno.EACCES, errno.EPERM):
            why = "permission denied; fix its permissions or choose another folder"
        elif no in (errno.ENOSPC, errno.EDQUOT):
            why = "no space left on the device (or quota exceeded); free space or choose " \
                  "another folder"
        elif no in (errno.ENOTDIR, errno.EEXIST):
            why = "a file is in the way where a folder is needed; remove it or choose another path"
        else:
            why = e.strerror or type(e).__name__
        where = f" ({setting})" if setting else ""
        named = f"{path}{where}"
        if e.filename and str(e.filename) != str(path):  # the file inside PATH that failed
            named += f", at {e.filename}"
        return cls(f"cannot {doing} {named}: {why}")

    @classmethod
    def of_write(cls, e: Exception, path: object, doing: str,
                 setting: str = "") -> "FileSystemError | None":
        """`of` for errors of libraries that hide the OSError (torch.save, safetensors):
        None when E does not look like a failed write."""
        import errno

        if isinstance(e, OSError):
            return cls.of(e, path, doing, setting)
        text = str(e)
        if any(m in text for m in ("No space left", "StorageFull", "os error 28", "code: 28")):
            return cls.of(OSError(errno.ENOSPC, "No space left on device"), path, doing, setting)
        if any(m in text for m in ("Permission denied", "PermissionDenied", "os error 13")):
            return cls.of(OSError(errno.EACCES, "Permission denied"), path, doing, setting)
        if "Read-only file system" in text or "os error 30" in text:
            return cls.of(OSError(errno.EROFS, "Read-only file system"), path, doing, setting)
        if "failed writing file" in text or "file write failed" in text:  # torch.save
            where = f" ({setting})" if setting else ""
            return cls(f"cannot {doing} {path}{where}: writing failed (full disk or quota?); "
                       "free space or choose another folder")
        return None
