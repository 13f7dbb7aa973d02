"""A job's files, listed and served without ever leaving the job directory.

Every requested path is checked twice: lexically (no absolute paths, no ``..``, no NUL) and after
resolving symlinks (the real path must still be inside the job directory), because a job's own
process could plant a symlink pointing anywhere. A file with more than one hard link is never
listed, served or archived either: a job could hard-link a file it may read but its owner may not
(a hard link has no target to resolve; it *is* the other file).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

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
        for info in list_artifacts(root):
            tar.add(str(root / info.path), arcname=f"{arcname}/{info.path}", recursive=False)
            data = pipe.drain()
            if data:
                yield data
    data = pipe.drain()
    if data:
        yield data
