"""Notebook 07's training session helpers: live loss curves, a disconnect played on purpose, and TensorBoard.

The first two are :class:`~detr_nb.trainer.Trainer` callbacks, functions of the trainer called after every
optimizer step.
"""
from __future__ import annotations

import sys
from typing import Callable, List

from IPython import get_ipython
from IPython.display import display

from ..figures import loss_figure


class LiveLossPlot:
    """Redraws the loss curves of ``trainer.history`` (:func:`detr_nb.figures.loss_figure`) every ``every`` steps
    when new metrics lines were logged, in one notebook output updated in place (``display_id``: Colab and
    Jupyter, no widget). Each new trainer (a session of the run) gets a new output in the cell that runs it;
    ``resumes`` holds the steps at which a session started from a checkpoint (dotted lines). ``show=False``
    only builds the figure (``last_figure``)."""

    def __init__(self, every: int = 50, show: bool = True):
        self.every, self.show = max(1, int(every)), show
        self.resumes: List[int] = []
        self.draws, self.last_figure, self._handle, self._drawn, self._trainer = 0, None, None, 0, None

    def __call__(self, trainer) -> None:
        if trainer is not self._trainer:                # a new session: a new output, and note the resume
            self._trainer, self._handle = trainer, None
            if trainer.resumed_from is not None:
                self.resumes.append(trainer.step - 1)
        if trainer.step % self.every or len(trainer.history) == self._drawn:
            return
        self._drawn = len(trainer.history)
        self.last_figure = loss_figure(trainer.history, resumes=self.resumes)
        self.draws += 1
        if self.show and self._handle is None:
            self._handle = display(self.last_figure, display_id=True)
        elif self.show:
            self._handle.update(self.last_figure)


class SimulatedDisconnect(RuntimeError):
    """Raised by :func:`disconnect_after`: a lost Colab runtime in the middle of training."""


def disconnect_after(step: int) -> Callable:
    """A callback that raises :class:`SimulatedDisconnect` once ``trainer.step`` reaches ``step``: like a real
    disconnect it gives the trainer no chance to save, so the next session resumes from the last checkpoint."""
    def callback(trainer) -> None:
        if trainer.step >= step:
            raise SimulatedDisconnect(f"runtime lost at step {trainer.step} (simulated)")
    return callback


def show_tensorboard(logdir, start: bool = True) -> None:
    """TensorBoard of a run's event files in the notebook, as ``%load_ext tensorboard`` and ``%tensorboard --logdir
    <logdir>`` show it in Colab; elsewhere (or with ``start=False``) the command that shows it, one line."""
    shell = get_ipython()
    if start and shell is not None and "google.colab" in sys.modules:
        shell.run_line_magic("load_ext", "tensorboard")
        shell.run_line_magic("tensorboard", f"--logdir {logdir}")
    else:
        print(f"TensorBoard: tensorboard --logdir {logdir} (in a terminal), or %load_ext tensorboard and "
              f"%tensorboard --logdir {logdir} (in a notebook)")
