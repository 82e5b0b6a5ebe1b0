"""Checkpoints that survive a Colab disconnect, and one run per output folder. Notebook 07.

A session can die at any moment, so:

* a checkpoint is written to a temporary file beside its place, flushed and fsync'ed, then moved over the
  old one with ``os.replace`` (atomic on POSIX): a reader never sees half a file;
* the folder keeps ``last.pth`` (newest), ``prev.pth`` (the one before) and ``best.pth``; a ``last.pth`` that
  cannot be read is never rotated over the good ``prev.pth``;
* a full disk leaves the previous checkpoint intact and says so in one line;
* loading uses ``torch.load(weights_only=True)`` (no code from a pickle): everything stored is plain data;
  a truncated or foreign file is skipped for the previous good one, and none usable is an error, never a
  silent fresh start;
* :class:`RunLock` holds ``<out>/.lock`` (``flock``, released by the kernel when the process dies): two runs
  never write into one folder.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .config import build_model
from .errors import ConfigError, UserError

try:   # POSIX; elsewhere (Windows) runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT, VERSION = "detr_nb-checkpoint", 2
LAST, PREV, BEST = "last.pth", "prev.pth", "best.pth"
# What a resumed run must share with its checkpoint: the data order and the position in the epoch depend on it.
RESUME_KEYS = ("model", "dataset", "data_kwargs", "train_split", "batch_size", "accum_steps", "seed", "world_size")


class CheckpointError(UserError):
    """A checkpoint file that cannot be used (truncated, foreign, written by a newer version)."""


class DiskFullError(UserError):
    """A checkpoint could not be written for want of space; the one before it is intact."""


class RunDirInUse(UserError):
    """Another process is training into the same output folder."""


def atomic_write(path: Path, write: Callable, before_replace: Optional[Callable] = None) -> Path:
    """``write(f)`` into a temporary file beside ``path``, fsync, then ``os.replace`` it into place;
    ``before_replace()`` runs in between (the rotation of last.pth: nothing is touched until the file is whole)."""
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
    with contextlib.suppress(OSError):   # the rename itself, durable (not possible on some file systems)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _disk_full(exc: Optional[BaseException]) -> bool:
    """Whether ``exc`` or an exception it arose from is "no space left" (torch.save wraps the OSError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def load_checkpoint(path, map_location="cpu") -> Dict:
    """Load and validate a detr_nb checkpoint; :class:`CheckpointError` says why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, a pickle with code in it...
        raise CheckpointError(f"checkpoint {path} ({path.stat().st_size} bytes) cannot be read: {type(e).__name__}: "
                              f"{str(e)[:200]}. The file is truncated (the session died while copying it?) or not "
                              f"a checkpoint.") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a detr_nb training checkpoint. For the official DETR "
                              f"weights use detr_nb.load_pretrained; to start afresh use --no-resume or another --out")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {state.get('version')}, this detr_nb reads "
                              f"{VERSION}: it was written by {'a newer' if state['version'] > VERSION else 'an older'} "
                              f"detr_nb; use --no-resume or another --out to start afresh")
    return state


def load_latest(directory, log: Callable = print) -> Optional[Tuple[Dict, Path]]:
    """The newest usable checkpoint of ``directory`` as ``(state, path)``, None if there is none. A bad file is
    reported through ``log`` and the one before it used; files that are all bad raise (losing work silently
    is worse than stopping)."""
    directory = Path(directory)
    errors, found = [], None
    for path in (directory / LAST, directory / PREV, directory / BEST):
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            log(f"[checkpoint] skipping {path.name}: {e}")
            continue
        if found is None or state["step"] > found[0]["step"]:   # best may be older: the furthest along wins
            found = (state, path)
        if path.name in (LAST, PREV):
            break
    if found is None and errors:
        raise CheckpointError(f"no usable checkpoint in {directory}:\n  " + "\n  ".join(errors))
    return found


class CheckpointManager:
    """Writes ``last.pth`` (the previous one rotated to ``prev.pth``) and ``best.pth`` into ``directory``."""

    def __init__(self, directory, enabled: bool = True):
        self.directory, self.enabled = Path(directory), enabled
        self._written = None    # (inode, size, mtime) of the last.pth written here: known good without a read
        self.last_good: Optional[Tuple[Path, int]] = None   # the newest complete checkpoint and its step

    def _rotate(self) -> None:
        """last.pth becomes prev.pth, unless it cannot be read: then it is kept aside as last.pth.corrupt and the
        good prev.pth stays. A hard link keeps last.pth in place until the new one replaces it; where there are
        no hard links (a Drive mount), it is renamed."""
        last = self.directory / LAST
        if not last.exists():
            return
        st = last.stat()
        good = self._written == (st.st_ino, st.st_size, st.st_mtime_ns)
        if not good:
            try:
                load_checkpoint(last)
                good = True
            except CheckpointError:
                pass
        target = self.directory / (PREV if good else LAST + ".corrupt")
        link = target.with_name(target.name + ".link")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        try:
            os.link(last, link)
            os.replace(link, target)
        except OSError:
            os.replace(last, target)

    def save(self, state: Dict, is_best: bool = False) -> None:
        if not self.enabled:
            return
        state = {"format": FORMAT, "version": VERSION, **state}
        last, target = self.directory / LAST, self.directory / LAST
        try:
            atomic_write(last, lambda f: torch.save(state, f), before_replace=self._rotate)
            st = last.stat()
            self._written = (st.st_ino, st.st_size, st.st_mtime_ns)
            self.last_good = (last, int(state["step"]))
            if is_best:
                target = self.directory / BEST
                with open(last, "rb") as src:
                    atomic_write(target, lambda f: shutil.copyfileobj(src, f))
        except Exception as e:
            if not _disk_full(e):
                raise
            good = (f"the last good checkpoint is {self.last_good[0]} (step {self.last_good[1]})" if self.last_good
                    else "no checkpoint of this run was written yet")
            size = sum(v.numel() * v.element_size() for v in state["model"].values()) * 3   # weights + AdamW's two
            raise DiskFullError(f"cannot write {target} ({size / 2**20:.1f} MB): no space left on device; {good}. "
                                f"Free some space and run the same command again: it resumes from there") from None


def check_resumable(ours: Dict, saved: Dict, path: Path, out) -> None:
    """Refuse to continue a run whose checkpoint was trained under settings that the data order, the position in
    the epoch or the model depend on (``ours``: this run's config dict with its ``world_size`` and
    ``model_config``): resuming would silently train on other samples."""
    theirs = {**saved["config"], "world_size": saved["world_size"], "model_config": saved["model_config"]}
    same = lambda v: json.loads(json.dumps(v, default=str))   # noqa: E731 (tuples and lists alike)
    for key in RESUME_KEYS + ("model_config",):
        if same(theirs[key]) != same(ours[key]):
            raise ConfigError(f"cannot resume {out}: its checkpoint ({path.name}, step {saved['step']}) was trained "
                              f"with {key}={same(theirs[key])!r} and this run asks for {same(ours[key])!r}. Use the "
                              f"same {key}, or another --out, or --no-resume to start afresh")


# ----------------------------------------------------------------------------- RNG states, as plain data
def capture_rng_state() -> Dict:
    """RNG states of python, numpy, torch (CPU) and every CUDA device, as data weights_only accepts."""
    np_state = np.random.get_state(legacy=False)
    state = {"python": json.dumps(random.getstate()), "torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict) -> None:
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- one run per folder
_HELD: Dict[str, list] = {}   # real path of a lock this process holds -> [file descriptor, holder]


class RunLock:
    """Hold ``<directory>/.lock`` until :meth:`release` or the process's end; creating it also proves that the
    folder is writable. A second lock on a folder this process holds takes it over (a notebook that re-runs
    its cell must not lock itself out)."""

    def __init__(self, directory):
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.key = os.path.realpath(directory / ".lock")
            if self.key in _HELD:
                _HELD[self.key][1] = self
                return
            fd = os.open(self.key, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"--out {directory}: cannot write there ({e.strerror or e})") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirInUse(f"--out {directory} is in use by another training run (pid {owner}); wait for it "
                                  f"to end, or give this run another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD[self.key] = [fd, self]

    def release(self) -> None:
        entry = _HELD.get(self.key)
        if entry is not None and entry[1] is self:
            del _HELD[self.key]
            if fcntl is not None:   # unlock first: forked DataLoader workers share the open file
                fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])


def checkpoint_files(directory) -> List[Path]:
    directory = Path(directory)
    return [directory / n for n in (LAST, PREV, BEST) if (directory / n).is_file()]


def model_from_checkpoint(path_or_state, device="cpu", impl: Optional[str] = None) -> torch.nn.Module:
    """The model of a checkpoint (a path or its loaded state), rebuilt from the configuration it stores, in
    eval mode on ``device``."""
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    model = build_model(state["model_name"], num_classes=state["num_classes"], impl=impl or state["config"]["impl"],
                        **state["model_config"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()
