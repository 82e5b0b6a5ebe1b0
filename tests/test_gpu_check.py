"""bench/gpu_check.py's bookkeeping, in-process: a failed part is recorded and the next one runs, a part that would
not fit is skipped with the reason, ``--parts`` adds to the summary, and the figures it derives (steps/s from
metrics.jsonl, issue 9's targets from bench/train_step.py's lines, the T4 estimate). Its two documented commands
run in tests/test_documented_commands.py (run_gpu_check)."""
import importlib.util
import json

import pytest

from engine_utils import REPO

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


@pytest.fixture
def fake_parts(monkeypatch):
    """Four parts that start no process: one fails after a first result, one works, one needs too long, one is
    not run in --quick. ``calls`` lists the parts that ran."""
    calls = []

    def fails(ctx, log, rec):
        calls.append("1")
        rec["first"] = 1.5
        raise RuntimeError("boom")

    def works(ctx, log, rec):
        calls.append("2")
        rec["value"] = 42

    def never(ctx, log, rec):
        raise AssertionError("a part that does not fit ran")
    monkeypatch.setattr(check, "PARTS", [check.Part("1", "fails", 1, 1, fails), check.Part("2", "works", 1, 1, works),
                                         check.Part("3", "too long", 10**6, 10**6, never),
                                         check.Part("4", "not in quick", 1, None, never)])
    monkeypatch.setattr(check.signal, "signal", lambda *a: None)    # leave pytest's SIGTERM handler alone
    return calls


def test_a_failed_part_is_recorded_and_the_next_one_runs(tmp_path, fake_parts):
    out = tmp_path / "gpu"
    assert check.main(["--device", "cpu", "--quick", "--out", str(out), "--max-minutes", "1"]) == 0
    parts = json.loads((out / "summary.json").read_text())["parts"]
    assert fake_parts == ["1", "2"]
    assert parts["1"]["status"] == "failed" and parts["1"]["error"] == "RuntimeError: boom"
    assert parts["1"]["first"] == 1.5                    # what it measured before failing is kept
    assert parts["2"]["status"] == "ok" and parts["2"]["value"] == 42
    assert parts["3"]["status"] == "skipped" and parts["3"]["reason"].startswith("would not fit: needs about 1000000 s")
    assert parts["4"]["status"] == "skipped" and parts["4"]["reason"].startswith("--quick")
    md = (out / "summary.md").read_text()
    assert "**failed**: RuntimeError: boom (log: `part1.log`)" in md and "Skipped: would not fit" in md

    assert check.main(["--device", "cpu", "--quick", "--out", str(out), "--parts", "2"]) == 0   # adds to the summary
    again = json.loads((out / "summary.json").read_text())["parts"]
    assert fake_parts == ["1", "2", "2"] and {n: again[n] for n in "134"} == {n: parts[n] for n in "134"}


def test_steps_per_second_from_metrics(tmp_path):
    """Between the first and the last metrics line: 20 steps in 2 s (the first window, with its warm-up, left out)."""
    rows = [{"kind": "step", "step": s, "time_s": t, "images_per_s": ips, "mem_mb": mem}
            for s, t, ips, mem in ((10, 5.0, 50.0, 700.0), (20, 6.0, 160.0, 900.0), (30, 7.0, 150.0, 800.0))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + [{"kind": "eval", "AP": 0.3}]))
    (tmp_path / "eval.json").write_text(json.dumps({"AP": 0.25, "AP50": 0.5}))
    m = check.measure(tmp_path)
    assert m["steps_per_s"] == pytest.approx(10.0) and m["steps"] == 30 and m["images_per_s"] == 150.0
    assert m["peak_mem_mb"] == 900.0 and m["of_t4_memory"] == pytest.approx(900 / 15360)
    assert (m["AP"], m["AP50"]) == (0.25, 0.5)


# bench/train_step.py's lines on a GPU (the format of its prints; its CPU output is parsed in the runner)
GPU_LINES = """device: NVIDIA H200 (cc 9.0); torch 2.14.1
setting: detr_r50 impl=torch, batch 8 at 800x1088, 1..8 boxes/image, channels_last=on, AdamW fused, 20 timed steps after 5 warm-up
[bf16] detr_nb train step:      240.00 images/s   (loss 9.123)
[bf16] backbone-only limit:     400.00 images/s   -> detr_nb / backbone = 0.60 (target >= 0.75)
[bf16] HF DETR train step:       60.00 images/s   (loss 9.9, 41,302,368 trainable) -> detr_nb / HF = 4.00x (target >= 3.8x)
[fp16 +scaler] detr_nb train step:   152.30 images/s   (loss 9.123)
[fp16 +scaler] HF DETR: skipped (--no-hf)
AMP loss check (eval mode, same weights and batch): fp32 9.1000; bf16 9.1100 (rel. diff 1.1e-03)
[bf16] inference batch 1 at 800x1200:   120.00 images/s (paper: 28 FPS on a V100, batch 1)
[bf16] inference batch 8 at 800x1200:   300.00 images/s (paper: 28 FPS on a V100, batch 1)
[bf16 compiled] detr_nb train step:     280.00 images/s   (loss 9.123)
[bf16 compiled] backbone-only limit:    350.00 images/s   -> detr_nb / backbone = 0.80 (target >= 0.75)
"""


def test_issue_9_targets_and_the_t4_estimate_from_train_step_lines():
    parsed = check.parse_train_step(GPU_LINES)
    assert parsed["rows"] == {"bf16": {"images_per_s": 240.0, "backbone": 400.0, "hf": 60.0},
                              "fp16 +scaler": {"images_per_s": 152.3},
                              "bf16 compiled": {"images_per_s": 280.0, "backbone": 350.0}}
    assert [(i["batch"], i["images_per_s"]) for i in parsed["inference"]] == [(1, 120.0), (8, 300.0)]
    targets = {t["target"].split(" (")[0]: (t["value"], t["met"]) for t in check.against_targets(parsed)}
    assert targets == {"training images/s": (280.0, True), "of the backbone-only limit": (pytest.approx(0.8), True),
                       "x HF DETR": (4.0, True), "inference FPS, batch 1 at 800x1200": (120.0, True)}
    rec = {**parsed, "targets": check.against_targets(parsed), "targets_apply": True}
    md = "\n".join(check.md_part3(rec))
    # the T4 policy's row: 1/152.3 s = 6.6 ms per image, x 990/65 = 100 ms on a T4, 10.0 images/s
    assert "6.6 ms measured x 15.2 = 100 ms on a T4 if compute-bound: 10.0 images/s" in md
    assert "[fp16 +scaler] HF DETR: skipped (--no-hf)" in md and "| bf16 | 240.0 | 400.0 | 0.60 | 60.0 | 4.00 |" in md
