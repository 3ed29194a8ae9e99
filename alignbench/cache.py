"""The one cache service: build once under a lock, verify every file by sha256, memoise in-process.

* :func:`entry` makes sure ``folder`` holds a complete, verified cache entry. A builder writes the entry
  into a temporary sibling ``.<name>.tmp-XXXX``; the service then writes ``MANIFEST`` (every file of the
  entry with its sha256) and renames the folder into place (``os.replace``), all under a file lock, so
  concurrent processes build an entry once and a reader never sees a half-written one.
* Before an entry is used, every file is checked against its manifest (once per process). A missing
  manifest, a missing file or a sha256 mismatch is reported on stderr in one line and the entry is rebuilt.
* Temporary folders left by a killed build (``.<name>.tmp-*`` whose lock nobody holds) are removed by the
  next build in the same cache folder.
* Single-file entries (reference log-probs) use :func:`tensors`: ``io.save_tensors`` sidecars, the same
  notice and rebuild on mismatch.
* Builds run with one torch thread, so an entry's bits do not depend on the caller's thread count.
* :func:`memo` gives a process-global dict registered here; :func:`clear` empties every memo (what a fresh
  process would not have), e.g. between benchmark repetitions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from . import io

MANIFEST = "MANIFEST.sha256.json"
_MEMOS: list[dict] = []
_VERIFIED: set[str] = set()  # entries checked in this process (cleared by clear())


def memo(name: str) -> dict:
    """A process-global memo dict, emptied by :func:`clear` (``name`` documents what it holds)."""
    d: dict = {}
    _MEMOS.append(d)
    return d


def clear() -> None:
    """Forget every in-process memo and verification (what a fresh process would not have)."""
    for d in _MEMOS:
        d.clear()
    _VERIFIED.clear()


def notice(message: str) -> None:
    """One line on stderr (cache rebuilds are never silent)."""
    print(f"alignbench: {message}", file=sys.stderr, flush=True)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Record the sha256 of every file under ``folder`` in ``folder/MANIFEST``."""
    io.write_json(folder / MANIFEST, {str(p.relative_to(folder)): io.sha256_file(p) for p in _files(folder)})


def problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete, intact entry (None when every file matches its manifest)."""
    man = folder / MANIFEST
    if not man.is_file():
        return "has no checksum manifest" if folder.exists() else None
    try:
        expected = io.read_json(man)
    except ValueError:
        return "has an unreadable checksum manifest"
    present = {str(p.relative_to(folder)) for p in _files(folder)}
    for rel, digest in expected.items():
        if rel not in present:
            return f"lacks {rel}"
        if io.sha256_file(folder / rel) != digest:
            return f"{rel} fails its sha256 check"
    extra = sorted(present - set(expected))
    return f"holds an unexpected file {extra[0]}" if extra else None


def _intact(folder: Path) -> bool:
    key = str(folder.resolve())
    if key in _VERIFIED:
        return True
    if (folder / MANIFEST).is_file() and problem(folder) is None:
        _VERIFIED.add(key)
        return True
    return False


def _lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def clean_stale(parent: Path, held: str = "") -> None:
    """Remove ``.<name>.tmp-*`` folders of killed builds: those of entry ``held`` (whose lock the caller
    holds) and those whose entry lock nobody holds."""
    if not parent.is_dir():
        return
    for tmp in parent.glob(".*.tmp-*"):
        name = tmp.name[1:].rsplit(".tmp-", 1)[0]
        if name == held:
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        with io.file_lock(parent / f".{name}.lock", blocking=False) as got:
            if got:
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _one_thread():
    """Builds run with one torch thread: an entry's bits must not depend on the caller's thread count
    (a reduction over 2 threads rounds differently), since its key does not name it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def entry(folder: str | Path, build: Callable[[Path], None], *, what: str) -> bool:
    """Make ``folder`` a complete, verified entry, calling ``build(tmp)`` when it is missing or damaged.

    Returns True when this call built it, False when the cached entry was used. ``what`` names the entry
    in the rebuild notice (e.g. "exact reference model").
    """
    folder = Path(folder)
    if _intact(folder):
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    with io.file_lock(_lock_path(folder)):
        if _intact(folder):  # built by another process while this one waited
            return False
        why = problem(folder)
        if why is not None:
            notice(f"cache: {what} at {folder} {why}; rebuilding it")
        clean_stale(folder.parent, held=folder.name)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
        try:
            os.chmod(tmp, 0o777 & ~io._umask())  # mkdtemp makes 0700: follow the user's umask
            with _one_thread():
                build(tmp)
            write_manifest(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _VERIFIED.add(str(folder.resolve()))
    return True


def tensors(path: str | Path, build: Callable[[], dict[str, Any]], *, what: str) -> dict[str, Any]:
    """Tensors of a single-file entry (``io.save_tensors`` with its sha256 sidecar), built once under a
    lock; a file that fails its check is reported in one line and rebuilt."""
    path = Path(path)
    with io.file_lock(path.with_suffix(".lock")):
        cached = io.load_tensors(path)
        if cached is not None:
            return cached
        if path.exists():
            notice(f"cache: {what} at {path} fails its sha256 check; rebuilding it")
        with _one_thread():
            out = build()
        io.save_tensors(path, out)
        return out


def check_dir(cache_dir: str | Path, field: str = "cache_dir") -> None:
    """A one-line ConfigError unless ``cache_dir`` is a folder that can be written (or created); nothing is
    left behind by the check."""
    from .errors import ConfigError

    p = Path(cache_dir)
    if p.exists() and not p.is_dir():
        raise ConfigError(field, f"{p} exists and is not a folder")
    why = io.unwritable(p)
    if why:
        raise ConfigError(field, why)
