"""Checkpoints that survive a Colab disconnect: atomic writes, validation, fallback, RNG capture.

Notebook 07 (training on a T4) relies on this module: a session can die at any moment, so

* a checkpoint is written to a temporary file in the same directory, flushed and fsync'ed, then
  moved over the old one with ``os.replace`` (atomic on POSIX): a reader never sees half a file;
* the directory keeps ``last.pth`` (newest), ``prev.pth`` (the one before it) and ``best.pth``;
* loading uses ``torch.load(weights_only=True)`` (no arbitrary code from a pickle) and checks the
  file's format tag; a truncated or foreign file raises :class:`CheckpointError` with a clear
  message and :func:`load_latest` falls back to the previous good checkpoint.

Everything stored is plain data (tensors, numbers, strings, lists, dicts) so that
``weights_only=True`` accepts it: numpy's RNG state is converted to a tensor, for instance.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import UserError

FORMAT = "detr_nb-checkpoint"
VERSION = 1
LAST, PREV, BEST = "last.pth", "prev.pth", "best.pth"
REQUIRED_KEYS = ("format", "version", "model", "step", "epoch")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (truncated, foreign, wrong version)."""


class DiskFullError(UserError):
    """A checkpoint could not be written for want of space; the one before it is intact."""


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it arose from is "no space left" (torch.save wraps the OSError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def nbytes(obj) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: the size its file will have, within a few %."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


# ----------------------------------------------------------------------------- atomic files
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, some network filesystems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write, before_replace=None) -> Path:
    """Run ``write(f)`` on a temporary file beside ``path``, fsync it, then ``os.replace`` it into place.
    ``before_replace()`` runs between the two (CheckpointManager rotates ``last.pth`` there): until the new file
    is complete, nothing that was there is touched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _link_over(src: Path, dst: Path) -> None:
    """Make ``dst`` the file ``src`` is and leave ``src`` in place: a hard link moved over ``dst``, so that
    ``last.pth`` never goes missing while it is rotated. Where the file system has no hard links (a Drive
    mount), ``src`` is renamed to ``dst``: for the moment until the new last.pth is moved in, only ``dst``
    holds the newest checkpoint, which :func:`load_latest` then reads (a copy would double every save)."""
    tmp = dst.with_name(dst.name + ".link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        os.replace(src, dst)
        return
    os.replace(tmp, dst)


def atomic_copy(src, dst) -> Path:
    """Copy a file atomically (temporary copy + fsync + ``os.replace``)."""
    def copy(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)
    return _atomic_write(Path(dst), copy)


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state() -> Dict:
    """RNG states of python, numpy, torch (CPU) and every CUDA device, as weights_only-safe data."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_to_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state({
        "bit_generator": np_state["bit_generator"],
        "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": int(np_state["pos"])},
        "has_gauss": int(np_state["has_gauss"]),
        "gauss": float(np_state["gauss"]),
    })
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


# ----------------------------------------------------------------------------- load / validate
def load_checkpoint(path, map_location="cpu") -> Dict:
    """Load and validate a detr_nb checkpoint; raise :class:`CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, a pickle with code in it...
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) cannot be read: {type(e).__name__}: {str(e)[:200]}. "
            "The file is truncated (e.g. the session died while copying it) or not a checkpoint."
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        keys = list(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a detr_nb training checkpoint (found {keys}). "
            "For the official DETR weights use detr_nb.load_pretrained; "
            "to start afresh in this directory use --no-resume or another --out.")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    if state["version"] > VERSION:
        raise CheckpointError(f"checkpoint {path} has version {state['version']} > {VERSION}: "
                              "written by a newer detr_nb")
    return state


def candidates(directory) -> List[Path]:
    """Checkpoint files of a run directory, newest first (last, prev, best)."""
    directory = Path(directory)
    return [directory / n for n in (LAST, PREV, BEST) if (directory / n).is_file()]


def load_latest(directory, map_location="cpu", log=print) -> Optional[Tuple[Dict, Path]]:
    """The newest valid checkpoint of ``directory`` as ``(state, path)``, or None if there is none.

    A bad file is reported through ``log`` and skipped in favour of the previous one. If files exist
    but none is valid, :class:`CheckpointError` is raised: silently starting over would lose work.
    """
    files = candidates(directory)
    errors = []
    best_state, best_path = None, None
    for path in files:
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as e:
            errors.append(str(e))
            log(f"[checkpoint] skipping {path.name}: {e}")
            continue
        # last/prev are in time order; best may be older, so take the one furthest along.
        if best_state is None or state["step"] > best_state["step"]:
            best_state, best_path = state, path
        if path.name in (LAST, PREV):
            break  # the newest readable of last/prev is the resume point
    if best_state is None and errors:
        raise CheckpointError("no usable checkpoint in " + str(directory) + ":\n  " + "\n  ".join(errors))
    if best_state is None:
        return None
    return best_state, best_path


class CheckpointManager:
    """Writes ``last.pth`` (rotating the previous one to ``prev.pth``) and ``best.pth``.

    Only a readable ``last.pth`` is rotated into ``prev.pth``: after a resume that had to skip a corrupt
    ``last.pth`` for ``prev.pth``, rotating the corrupt file would overwrite the one good checkpoint left.
    A ``last.pth`` this manager did not write itself is checked once (loaded) before it is rotated; a bad
    one is kept aside as ``last.pth.corrupt`` for inspection.
    """

    def __init__(self, directory, enabled: bool = True):
        self.directory = Path(directory)
        self.enabled = enabled
        self._written = None    # (inode, size, mtime) of the last.pth this manager wrote
        self.last_good: Optional[Tuple[Path, int]] = None   # the newest complete checkpoint and its step

    @staticmethod
    def _signature(path: Path):
        st = path.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _rotate(self) -> None:
        """The current last.pth becomes prev.pth, unless it cannot be read (then it is kept aside as
        last.pth.corrupt and prev.pth, the good one, stays)."""
        if self.last.exists():
            keep = PREV if self._last_is_good() else LAST + ".corrupt"
            _link_over(self.last, self.directory / keep)


    def _last_is_good(self) -> bool:
        if self._written is not None and self._signature(self.last) == self._written:
            return True
        try:
            load_checkpoint(self.last)
            return True
        except CheckpointError:
            return False

    @property
    def last(self) -> Path:
        return self.directory / LAST

    @property
    def best(self) -> Path:
        return self.directory / BEST

    def save(self, state: Dict, is_best: bool = False) -> Optional[Path]:
        """Write ``state`` as the new last checkpoint (and best when ``is_best``)."""
        if not self.enabled:
            return None
        state = {"format": FORMAT, "version": VERSION, **state}
        target = self.last
        try:
            _atomic_write(self.last, lambda f: torch.save(state, f), before_replace=self._rotate)
            self._written = self._signature(self.last)
            self.last_good = (self.last, int(state["step"]))
            if is_best:
                target = self.best
                atomic_copy(self.last, self.best)
        except Exception as e:
            if not _disk_full(e):
                raise
            good = (f"the last good checkpoint is {self.last_good[0]} (step {self.last_good[1]})" if self.last_good
                    else "no checkpoint of this run was written yet")
            raise DiskFullError(f"cannot write {target} ({nbytes(state) / 2**20:.1f} MB): no space left on device; "
                                f"{good}. Free some space and run the same command again: it resumes from "
                                f"there") from None
        return self.last


def model_state_from(path_or_state) -> Dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint path/dict (ours, or a dict with a "model" key)."""
    if isinstance(path_or_state, (str, os.PathLike)):
        path = Path(path_or_state)
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            state = torch.load(path, map_location="cpu", weights_only=True)
            warnings.warn(f"{path} is not a detr_nb checkpoint; reading its weights only")
    else:
        state = path_or_state
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        return state["model"]
    return state
