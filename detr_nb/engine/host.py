"""The machine a run trains on: how busy its CPU is, how many threads to use, how much memory a run takes."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Callable, Optional

import torch


def cpu_is_busy(samples: int = 5, interval_s: float = 0.1, loadavg_path: str = "/proc/loadavg") -> bool:
    """True when other processes keep every core busy *now*: the 1-minute load average exceeds the core
    count AND so does the median number of runnable tasks (other than this one) over a few samples of
    /proc/loadavg. The average alone stays high for a minute after a job ends (our own data generation,
    a test run), which would cost the whole run its second thread; a snapshot alone is noisy."""
    cores = os.cpu_count() or 1
    try:
        if os.getloadavg()[0] <= cores:
            return False
        running = []
        for _ in range(samples):
            with open(loadavg_path) as f:
                running.append(int(f.read().split()[3].split("/")[0]) - 1)   # minus this process
            time.sleep(interval_s)
    except (AttributeError, OSError, ValueError, IndexError):
        return False
    return sorted(running)[len(running) // 2] >= cores


def set_threads(threads: Optional[int], device: torch.device, log: Callable = print) -> None:
    """``threads`` torch CPU threads; by default torch's own count, or 1 when other processes keep every core
    busy (oversubscribed OpenMP threads were 4-6x slower than 1 thread, measured)."""
    if threads:
        torch.set_num_threads(threads)
        return
    if device.type == "cpu" and torch.get_num_threads() > 1 and cpu_is_busy():
        torch.set_num_threads(1)
        log(f"the CPU is busy (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
            "using 1 torch thread (--threads N to override)")


def memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA's allocator on a GPU, the resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except Exception:
        return float("nan")


@contextlib.contextmanager
def stop_requests(request: Callable[[str], None]):
    """While inside: Ctrl-C or SIGTERM call ``request(signal name)`` (the loop stops cleanly after the step,
    writing a checkpoint); a second Ctrl-C raises KeyboardInterrupt at once. Only the main thread can
    install handlers; elsewhere this does nothing. Processes forked inside the block (DataLoader workers)
    inherit the handler and ignore the signal: the main process stops them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked = []
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:      # a forked worker: Colab's stop button signals every process
            return
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.append(signum)
        request(signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def say(msg) -> None:
    """Print a line without breaking a tqdm progress bar."""
    try:
        from tqdm.auto import tqdm
        tqdm.write(str(msg))
    except Exception:
        print(msg, flush=True)
