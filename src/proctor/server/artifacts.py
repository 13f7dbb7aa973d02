"""A job's files, listed and served without ever leaving the job directory.

Every requested path is checked twice: lexically (no absolute paths, no ``..``, no NUL) and after
resolving symlinks (the real path must still be inside the job directory), because a job's own
process could plant a symlink pointing anywhere. A file with more than one hard link is never
listed, served or archived either: a job could hard-link a file it may read but its owner may not
(a hard link has no target to resolve; it *is* the other file).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from proctor.errors import NotFoundError, PermissionDeniedError, TooLargeError
from proctor.server.schemas import ArtifactInfo


def safe_path(root: Path, relative: str) -> Path:
    """``root / relative`` if it stays inside ``root`` and is a regular file; else an error."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise PermissionDeniedError(f"artifact path {relative!r} is not allowed")
    parts = PurePosixPath(relative).parts
    if PurePosixPath(relative).is_absolute() or any(p in ("..", "") for p in parts):
        raise PermissionDeniedError(f"artifact path {relative!r} leaves the job directory")
    real_root = root.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(real_root):
        raise PermissionDeniedError(f"artifact path {relative!r} leaves the job directory")
    if not candidate.is_file():
        raise NotFoundError(f"no artifact {relative!r}")
    if _linked_elsewhere(candidate):
        raise PermissionDeniedError(f"artifact {relative!r} has other hard links and is not served")
    return candidate


def open_artifact(root: Path, relative: str) -> tuple[BinaryIO, int]:
    """The artifact, open, and its size: ``safe_path``'s checks, then the same checks again on the
    open file, because a running job could swap the path for a link between check and open."""
    opened = _open_checked(root.resolve(), safe_path(root, relative))
    if opened is None:
        raise PermissionDeniedError(f"artifact {relative!r} is not a plain file of the job")
    return opened


def _open_checked(real_root: Path, path: Path) -> tuple[BinaryIO, int] | None:
    """``path`` opened without following a final symlink (nor blocking on a FIFO), if the open
    file is a regular file with one link whose real path is inside ``real_root``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        real = Path(os.readlink(f"/proc/self/fd/{fd}")) if Path("/proc/self/fd").is_dir() else path
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and real.is_relative_to(real_root):
            return os.fdopen(fd, "rb"), info.st_size
    except OSError:
        pass
    os.close(fd)
    return None


def iter_file(handle: BinaryIO, size: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """The first ``size`` bytes of ``handle`` (the length announced; a running job's log grows
    meanwhile) in chunks, closing it at the end or when the response is dropped."""
    with handle:
        left = size
        while left > 0 and (data := handle.read(min(chunk, left))):
            left -= len(data)
            yield data


def _linked_elsewhere(path: Path) -> bool:
    try:
        return path.stat().st_nlink > 1
    except OSError:
        return True


def check_uploads(files: Mapping[str, Any], *, job_dir: Path | None, max_files: int, max_bytes: int) -> None:
    """Refuse (413) a submission whose uploads exceed the file count, or whose bytes (decoded,
    plus what a resumed job's directory already holds) exceed the per-job disk cap."""
    if len(files) > max_files:
        raise TooLargeError(f"{len(files):,} files in one submission; this server accepts at most {max_files:,}")
    total = sum(_decoded_size(upload) for upload in files.values())
    if job_dir is not None and job_dir.is_dir():
        total += _disk_use(job_dir)
    if total > max_bytes:
        raise TooLargeError(f"the job's files would take {total:,} bytes; this server allows {max_bytes:,} per job")


def _disk_use(root: Path) -> int:
    """Bytes of the regular files under ``root``; a file that vanishes meanwhile (a running job's
    SQLite journal) counts as nothing."""
    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _decoded_size(upload: Any) -> int:
    content: str = upload.content
    if upload.encoding == "base64":
        return len(content) * 3 // 4
    return len(content.encode("utf-8", errors="surrogatepass"))


def list_artifacts(root: Path) -> list[ArtifactInfo]:
    """Regular files under ``root`` whose real path is inside it, as POSIX relative paths."""
    real_root = root.resolve()
    found = []
    for path in sorted(root.rglob("*")):
        try:
            if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(real_root):
                continue
            if _linked_elsewhere(path):
                continue
            found.append(ArtifactInfo(path=path.relative_to(root).as_posix(), size=path.stat().st_size))
        except OSError:
            continue
    return found


class _Pipe(io.RawIOBase):
    """A write-only buffer that tarfile writes into and the response drains chunk by chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.chunks.append(bytes(b))
        return len(b)

    def drain(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def iter_tar_gz(root: Path, arcname: str) -> Iterator[bytes]:
    """Stream ``root`` as a tar.gz without building it in memory or on disk; symlinks are skipped."""
    pipe = _Pipe()
    with tarfile.open(fileobj=pipe, mode="w|gz") as tar:
        real_root = root.resolve()
        for info in list_artifacts(root):
            opened = _open_checked(real_root, root / info.path)
            if opened is None:  # changed since it was listed
                continue
            with opened[0] as handle:
                member = tar.gettarinfo(arcname=f"{arcname}/{info.path}", fileobj=handle)
                tar.addfile(member, handle)
            data = pipe.drain()
            if data:
                yield data
    data = pipe.drain()
    if data:
        yield data
