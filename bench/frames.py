"""The package frames on the stack when ``python -m detr_nb train`` first calls the Hungarian solver.

    python bench/frames.py            # prints each frame (file:function) and the counts

Runs the main command on a tiny synthetic set and stops at scipy's ``linear_sum_assignment``.
"""
import os
import runpy
import sys
import tempfile

import detr_nb

PKG = os.path.dirname(os.path.abspath(detr_nb.__file__))


class Found(Exception):
    pass


def stack_at_solver():
    hits = []

    def profile(frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", "") == "linear_sum_assignment":
            f = frame
            while f is not None:
                path = os.path.abspath(f.f_code.co_filename)
                if path.startswith(PKG + os.sep):
                    hits.append((os.path.relpath(path, os.path.dirname(PKG)), f.f_code.co_name))
                f = f.f_back
            sys.setprofile(None)
            raise Found

    out = tempfile.mkdtemp()
    sys.argv = ["python -m detr_nb", "train", "--out", os.path.join(out, "run"), "--no-progress",
                "--set", "data_kwargs.num_train=32", "--set", "data_kwargs.num_val=8"]
    sys.setprofile(profile)
    try:
        runpy.run_module("detr_nb", run_name="__main__", alter_sys=True)
    except Found:
        pass
    finally:
        sys.setprofile(None)
    return hits[::-1]


if __name__ == "__main__":
    frames = stack_at_solver()
    for path, name in frames:
        print(f"  {path}:{name}")
    print(f"{len(frames)} package frames in {len({p for p, _ in frames})} files from the CLI to the Hungarian solver")
