"""Command line: ``python -m detr_nb train | evaluate | predict | compare | export`` (notebooks 07-11 make the
same calls).

    python -m detr_nb train                                   # the main job: synthetic data, CPU, 540 s budget
    python -m detr_nb train --time-budget 60 --set data_kwargs.num_train=400 --set data_kwargs.num_val=50
    python -m detr_nb train --recipe finetune --dataset balloon     # fine-tune the released DETR-R50
    python -m detr_nb train --recipe paper --model detr_r50 --dry-run   # print the official recipe, resolved
    torchrun --nproc_per_node=2 -m detr_nb train                  # DDP, one process per GPU
    python -m detr_nb evaluate --run runs/my-run               # COCO numbers of its newest checkpoint
    python -m detr_nb predict photo.jpg my_photos/ --run runs/my-run --out predictions
    python -m detr_nb compare --approaches scratch,torch --inits none --max-steps 300   # study/compare.py
    python -m detr_nb export --run runs/my-run -o model.onnx  # ONNX + onnxruntime check (the "export" extra)

``train`` has one option per field of :class:`detr_nb.engine.config.TrainConfig`; a ``--recipe`` sets the fields you
do not give. ``--set FIELD=VALUE`` sets any field (VALUE in JSON) and ``--set FIELD.KEY=VALUE`` one key of a
dict field. Errors you can fix (a bad option, a missing file) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    from .compare import add_compare_parser
    from .evaluate import add_evaluate_parsers
    from .export import add_export_parser
    from .train import add_train_parser

    parser = argparse.ArgumentParser(prog="python -m detr_nb", description="DETR from scratch: train, evaluate, predict")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_evaluate_parsers(sub)
    add_compare_parser(sub)
    add_export_parser(sub)
    return parser


def _user_errors() -> tuple:
    """Exception types that mean "fix your input": printed as one line, exit status 2."""
    from ..engine.checkpoint import CheckpointError
    from ..data.download import DownloadError
    from ..errors import UserError
    return (UserError, CheckpointError, DownloadError, FileNotFoundError)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
