"""Outputs that are whole or absent: written beside their destination, then renamed into place.

Destinations may be fsspec URLs (``s3://…``, ``memory://…``, ``file://…``), as Lightning's own paths may: a remote
folder is written locally first, uploaded beside its destination and moved into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same suffix) to write; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        _as_created(Path(temporary), 0o666)  # mkstemp's 0600 would keep others from reading the result
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _as_created(path: Path, mode: int) -> None:
    """Gives ``path`` the permissions that ``open`` or ``mkdir`` would have given it: ``mode`` less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path``, whole or not at all."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def local_path(path: str | os.PathLike) -> Path | None:
    """``path`` as a local path (a ``file://`` URL too), or None for a remote fsspec URL."""
    _, inner = fsspec.core.url_to_fs(str(path))
    return Path(inner) if fsspec.utils.get_protocol(str(path)) == "file" else None


def exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a local path or an fsspec URL) exists."""
    fs, inner = fsspec.core.url_to_fs(str(path))
    return fs.exists(inner)


@contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yields an empty temporary folder beside ``path`` to fill; on success it becomes ``path``.

    An existing ``path`` is replaced when ``overwrite``; otherwise it is kept (another process finished the same
    folder first) and the new one discarded. On error, nothing is left behind. For a remote fsspec URL the folder
    is filled locally, uploaded to a hidden name beside ``path`` and moved into place.
    """
    local = local_path(path)
    if local is None:
        with _remote_folder(str(path), overwrite) as staging:
            yield staging
        return
    path = local
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield staging
        _as_created(staging, 0o777)  # mkdtemp's 0700 would keep others from reading the result
        if overwrite and path.exists():
            shutil.rmtree(path)
        try:
            staging.rename(path)
        except OSError:
            if overwrite or not path.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _remote_folder(url: str, overwrite: bool) -> Iterator[Path]:
    fs, target = fsspec.core.url_to_fs(url)
    parent, name = target.rstrip("/").rsplit("/", 1) if "/" in target.rstrip("/") else ("", target)
    partial = f"{parent}/.{name}-{uuid.uuid4().hex}" if parent else f".{name}-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory() as staging:
        yield Path(staging)
        try:
            fs.put(f"{staging}/", partial, recursive=True)
            if fs.exists(target):
                if not overwrite:
                    return
                fs.rm(target, recursive=True)
            fs.mv(partial, target, recursive=True)
        finally:
            if fs.exists(partial):
                fs.rm(partial, recursive=True)
