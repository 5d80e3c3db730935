"""File helpers shared by every step: streamed hashing and atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from data_contracts import EmptyFileError, MissingFileError, OutputError, UnreadableFileError

_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path, *, chunk_bytes: int = _CHUNK_BYTES) -> str:
    """Hex SHA-256 of a file, streamed in chunks (constant memory).

    Args:
        path: the file to hash.
        chunk_bytes: bytes read per step.

    Returns:
        The 64-character hex digest.

    Raises:
        MissingFileError: the file does not exist.
        UnreadableFileError: it cannot be read (permissions).
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
    except FileNotFoundError as error:
        raise MissingFileError("does not exist", path=path) from error
    except PermissionError as error:
        raise UnreadableFileError(f"cannot be read ({error.strerror})", path=path) from error
    return digest.hexdigest()


def require_nonempty_file(path: str | Path) -> int:
    """Check that ``path`` is an existing, non-empty regular file and return its size.

    Raises:
        MissingFileError: it does not exist or is not a regular file.
        EmptyFileError: it has zero bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("does not exist or is not a regular file", path=path)
    size = path.stat().st_size
    if size == 0:
        raise EmptyFileError("is empty (0 bytes)", path=path)
    return size


@contextlib.contextmanager
def atomic_output(destination: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place on success.

    The temporary file lives in the destination's folder (same file system, so the rename is
    atomic) and is removed if the block raises: a reader never sees a partial output.

    Args:
        destination: the final path.
        suffix: suffix of the temporary file (defaults to the destination's full suffix, so that
            drivers that look at extensions still work).

    Raises:
        OutputError: the folder cannot be written.
    """
    destination = Path(destination)
    suffix = suffix if suffix is not None else "".join(destination.suffixes)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=f".part{suffix}", dir=destination.parent
        )
        os.close(handle)
    except OSError as error:
        raise OutputError(
            f"cannot create a file here ({error.strerror})", path=destination
        ) from error
    temp_path = Path(temp_name)
    try:
        yield temp_path
        # mkstemp makes the file private (0600); an output gets the usual 0666 & ~umask.
        os.chmod(temp_path, 0o666 & ~_umask())
        os.replace(temp_path, destination)
    except OSError as error:
        temp_path.unlink(missing_ok=True)
        raise OutputError(
            f"writing failed ({error.strerror or error})", path=destination
        ) from error
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask: from /proc on Linux (no race with other threads), else by setting
    it and straight back."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as status:
            line = next(line for line in status if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(destination: str | Path, text: str) -> Path:
    """Write ``text`` to ``destination`` atomically (temp file + rename)."""
    destination = Path(destination)
    with atomic_output(destination) as temp_path:
        temp_path.write_text(text, encoding="utf-8")
    return destination
