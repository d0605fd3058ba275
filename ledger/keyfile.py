"""Secret files (signing keys, HMAC keys, keystores): created 0600 in one step, refused when others can read them.

Every secret the ledger keeps on disk goes through these two functions, so they are all created
and checked alike: created under a temporary name with mode 0600 and linked into place (atomic,
never over an existing file, so two processes starting at once agree on one secret), and read
only from a regular file that group and others can neither read nor write.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path


class KeyFileError(ValueError):
    """A secret file that is missing, malformed, or open to other users."""


def read_private(path: Path, what: str = "key file") -> bytes:
    """The bytes of the secret file ``path``; ``what`` names it in errors."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot open {what} {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)  # the mode of the file we read, not of whatever the path names later
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(f"{what} {path} has mode {mode:04o}: group or others can read or write it; "
                               f"run: chmod 600 {path}")  # fmt: skip
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def create_private(path: Path, data: bytes) -> bool:
    """Write ``data`` to a new secret file ``path`` (directory created 0700); False if ``path`` already existed,
    which is left as it was."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    created = False
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # the umask may have removed the owner's bits
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process created it first: theirs stays
            os.link(tmp, path)
            created = True
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return created
