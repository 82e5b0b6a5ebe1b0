"""The prepared GPU run: correctness on CUDA, the T4 policy on a bigger GPU, throughput, notebook 07, in order.

    python bench/gpu_check.py --out runs/gpu                            # the GPU machine (about 13 minutes)
    python bench/gpu_check.py --device cpu --quick --out runs/gpu-cpu   # every part at tiny sizes (CI, the CPU)

1. correctness: ``pytest -m cuda tests/test_cuda.py`` (fp16 + GradScaler + fused AdamW, bf16, fp32 matcher and
   losses under autocast, channels_last, cudnn.benchmark, a kill and exact resume, the CLI in fp16);
2. the T4 policy: the main job with ``--amp fp16`` for 120 s (steps/s, peak memory against a T4's 15 GB, AP) and
   the CPU's steps/s on the same recipe; when the GPU is not 3x the CPU, the main job at 192 x 192 px as well;
3. throughput: bench/train_step.py (issue 9's command) against issue 9's targets;
4. notebook 07 in full mode (bench/notebook_times.py), when it fits.

Each part logs to ``--out`` (``part1.log`` ...); ``summary.json`` and ``summary.md`` (for docs/speed.md) are written
after every part: a failed part, or a stopped script, leaves the others' results. A part that would not fit in
``--max-minutes`` is skipped, with the reason; a command running at the deadline is stopped. Where a command may
run 10 minutes: ``--parts 1 2 --max-minutes 9``, then ``--parts 3 4 --max-minutes 9`` (adds to the summary).
T4 time = measured time x 15.2, the ratio of the fp16 dense-matmul peaks (H100 SXM ~990 TFLOPS, as an H200; T4
65), for a compute-bound step; the main job's small model is not compute-bound (kernel launches, host work).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import torch  # noqa: E402

from train_step import PAPER_FPS, TARGETS  # noqa: E402

H100_TFLOPS, T4_TFLOPS = 990.0, 65.0      # fp16 dense matmul (tensor cores); an H200 has the H100's compute
T4_RATIO = H100_TFLOPS / T4_TFLOPS        # 15.2: a compute-bound step takes this much longer on a T4
T4_MEMORY_MB = 15 * 1024                  # what a T4 leaves to one process (nvidia-smi shows 15360 MiB)
GPU_OVER_CPU = 3.0                        # below this steps/s ratio the main job leaves the GPU idle
NOTEBOOK_STEPS = 1500                     # notebook 07's run: the main job's fixed steps
MAIN_BUDGET_S, CPU_BUDGET_S, LARGER_MAX_S = 120, 30, 90   # part 2's runs: --time-budget of each
PART2_S = 300                                              # part 2's budget (the larger run gets what is left)
LARGER = {"full": [192, 192], "quick": [96, 96]}   # the larger recipe's synthetic image size
# --quick: the main job's recipe at tiny sizes (a ~50k-parameter detr_tiny_aided, 64 px images, 3 steps)
QUICK_RUN = ["--set", "data_kwargs.num_train=16", "--set", "data_kwargs.num_val=4", "--set", "data_kwargs.max_objects=3",
             "--set", "data_kwargs.image_size=[64,64]", "--batch-size", "4", "--max-steps", "3", "--time-budget", "none",
             "--log-every", "1", "--model-overrides", json.dumps(dict(
                 backbone_width=0.125, return_layer="layer2", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2,
                 dim_feedforward=64, num_queries=8))]
QUICK_STEP = ["--model", "detr_tiny", "--size", "64", "64", "--batch", "2", "--steps", "1", "--warmup", "0", "--no-hf",
              "--infer-batches", "1", "--infer-size", "64", "64", "--infer-steps", "1"]

Part = namedtuple("Part", "number title full_s quick_s run")   # quick_s None: not run in --quick


class Context:
    """The run's settings, its deadline and the environment of the commands it starts."""

    def __init__(self, args, device: torch.device):
        self.args, self.device, self.out = args, device, Path(args.out)
        self.gpu, self.quick = device.type == "cuda", args.quick
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.env = {"OMP_NUM_THREADS": "1"} if self.quick else {}      # --quick: one thread (CI), unless set
        self.env.update(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                        MPLBACKEND="Agg")

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_logged(argv, log: Path, ctx: Context):
    """Run ``argv`` in the repository root, its output appended to ``log``; at the deadline (or when this script is
    stopped) its whole process group is killed, data workers and test subprocesses included. Returns (exit
    status, its output); a command stopped at the deadline has status 124."""
    start = log.stat().st_size if log.exists() else 0
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, argv))}\n")
        f.flush()
        proc = subprocess.Popen([str(a) for a in argv], cwd=REPO, env=ctx.env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(max(1.0, ctx.left()))
        except subprocess.TimeoutExpired:
            rc = 124
            f.write("\n[gpu_check: stopped at the --max-minutes deadline]\n")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    with open(log) as f:
        f.seek(start)
        return rc, f.read()


def last_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[-1]


# ----------------------------------------------------------------------------------------- 1. correctness
def part_correctness(ctx: Context, log: Path, rec: dict) -> None:
    one_process = ["-n", "0"] if importlib.util.find_spec("xdist") else ["-o", "addopts=-ra"]   # without xdist too
    rc, text = run_logged([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *one_process,
                           "tests/test_cuda.py"], log, ctx)
    lines = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?)\b", line)]
    tally = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", lines[-1] if lines else "")}
    rec.update(pytest=(lines[-1] if lines else last_line(text)).strip("= "), tests=tally, exit_status=rc,
               failed_tests=re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M))
    if rc != 0:
        raise RuntimeError(f"pytest exited {rc}: {rec['pytest']}")


# ----------------------------------------------------------------------------------------- 2. the T4 policy
def measure(run: Path) -> dict:
    """steps/s between the first and the last metrics line (the first window's warm-up left out), the median
    images/s, the peak memory (CUDA's allocator on a GPU) and the COCO AP of a finished run."""
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "step"]
    if not rows:
        raise RuntimeError(f"{run}: no metrics line")
    first, last = rows[0], rows[-1]
    steps_per_s = ((last["step"] - first["step"]) / (last["time_s"] - first["time_s"]) if len(rows) > 1
                   else last["step"] / last["time_s"])
    ev = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
    peak = max(r["mem_mb"] for r in rows)
    return {"steps": last["step"], "steps_per_s": steps_per_s,
            "images_per_s": statistics.median(r["images_per_s"] for r in rows), "peak_mem_mb": peak,
            "of_t4_memory": peak / T4_MEMORY_MB, "AP": ev.get("AP"), "AP50": ev.get("AP50")}


def train_run(ctx: Context, log: Path, name: str, device: str, data: Path, extra, budget_s: float) -> dict:
    """``python -m detr_nb train`` (the main job's recipe) on ``device`` with ``extra`` options, measured."""
    run = ctx.out / "part2" / re.sub(r"\W+", "-", name).strip("-")
    argv = [sys.executable, "-m", "detr_nb", "train", "--device", device, "--data-root", data, "--out", run,
            "--no-resume", "--no-progress"]
    if ctx.quick:
        argv += QUICK_RUN
    else:
        argv += ["--time-budget", f"{budget_s:.0f}", "--workers", str(ctx.args.workers if device == "cuda" else 0),
                 "--set", f"data_kwargs.workers={ctx.args.workers}"]     # the synthetic set drawn by as many
    rc, text = run_logged(argv + list(extra), log, ctx)                  # the run's own options last: they win
    if rc != 0:
        raise RuntimeError(f"{name}: exit status {rc}: {last_line(text)}")
    precision = re.search(r"device \S+, (\S+ on [^\s,]+(?: \+ GradScaler)?)", text)
    return {"name": name, "device": device, "precision": precision.group(1) if precision else "?", **measure(run)}


def part_t4_policy(ctx: Context, log: Path, rec: dict) -> None:
    started, data, dev = time.monotonic(), ctx.out / "part2" / "data", ctx.device.type
    fp16, runs = ["--amp", "fp16"], rec.setdefault("runs", [])     # each run recorded as soon as it is measured
    runs.append(train_run(ctx, log, "main job, fp16", dev, data, fp16, MAIN_BUDGET_S))
    if ctx.args.cpu_steps_per_s:
        runs.append(dict(name="main job", device="cpu", steps_per_s=ctx.args.cpu_steps_per_s, source="--cpu-steps-per-s"))
    elif dev == "cpu":
        runs.append(dict(runs[0], name="main job", source="the run above: the device is the CPU"))
    else:
        runs.append(train_run(ctx, log, "main job", "cpu", data, ["--no-eval-at-end"],
                              CPU_BUDGET_S))
    rec["gpu_over_cpu"] = runs[0]["steps_per_s"] / runs[1]["steps_per_s"]
    if rec["gpu_over_cpu"] >= GPU_OVER_CPU:
        return
    size = LARGER["quick" if ctx.quick else "full"]
    budget = min(LARGER_MAX_S, PART2_S - (time.monotonic() - started) - 30, ctx.left() - 30)
    name = f"main job at {size[0]}x{size[1]}, fp16"
    if not ctx.quick and budget < 30:
        rec["larger"] = f"{name}: skipped, {budget:.0f} s left of the part's budget"
        return
    runs.append(train_run(ctx, log, name, dev, data.with_name(f"data-{size[0]}"),
                          fp16 + ["--set", f"data_kwargs.image_size={json.dumps(size)}"], budget))


# ----------------------------------------------------------------------------------------- 3. throughput
ROW = re.compile(r"^\[(?P<tag>[^\]]+)\] (?P<what>detr_nb train step|backbone-only limit|HF DETR train step):\s+"
                 r"(?P<ips>[\d.]+) images/s", re.M)
INFER = re.compile(r"^\[(?P<tag>[^\]]+)\] inference batch (?P<batch>\d+) at (?P<h>\d+)x(?P<w>\d+):\s+(?P<ips>[\d.]+)",
                   re.M)
KEYS = {"detr_nb train step": "images_per_s", "backbone-only limit": "backbone", "HF DETR train step": "hf"}


def parse_train_step(text: str) -> dict:
    """bench/train_step.py's lines: per row tag its images/s, backbone-only and HF figures; inference; notes."""
    rows = {}
    for m in ROW.finditer(text):
        rows.setdefault(m["tag"], {})[KEYS[m["what"]]] = float(m["ips"])
    infer = [{"tag": m["tag"], "batch": int(m["batch"]), "size": f"{m['h']}x{m['w']}", "images_per_s": float(m["ips"])}
             for m in INFER.finditer(text)]
    notes = re.findall(r"^(?:\[[^\]]+\] HF DETR: .*|AMP loss check.*|\s*torch\.compile \S+ .*|setting: .*)$", text, re.M)
    return {"rows": rows, "inference": infer, "notes": [n.strip() for n in dict.fromkeys(notes)]}


def against_targets(parsed: dict) -> list:
    """Issue 9's targets, each with the measured value and whether it is met."""
    rows = {t: r for t, r in parsed["rows"].items() if "images_per_s" in r}
    best_tag = max(rows, key=lambda t: rows[t]["images_per_s"])
    best = rows[best_tag]["images_per_s"]
    out = [("training images/s (best row: " + best_tag + ")", best, TARGETS["images_per_s"])]
    ratios = {t: r["images_per_s"] / r["backbone"] for t, r in rows.items() if "backbone" in r}
    if ratios:
        tag = max(ratios, key=ratios.get)
        out.append((f"of the backbone-only limit ({tag})", ratios[tag], TARGETS["of_backbone"]))
    hf = {t: r["images_per_s"] / r["hf"] for t, r in rows.items() if "hf" in r}
    if hf:
        tag = max(hf, key=hf.get)
        out.append((f"x HF DETR ({tag})", hf[tag], TARGETS["of_hf"]))
    batch1 = [i["images_per_s"] for i in parsed["inference"] if i["batch"] == 1 and i["size"] == "800x1200"]
    if batch1:
        out.append(("inference FPS, batch 1 at 800x1200 (4x the paper's 28)", max(batch1), 4 * PAPER_FPS))
    return [{"target": name, "value": value, "needed": need, "met": value >= need} for name, value, need in out]


def part_throughput(ctx: Context, log: Path, rec: dict) -> None:
    argv = [sys.executable, "bench/train_step.py", "--device", ctx.device.type, "--precision"]
    argv += ["auto", "fp16"] if ctx.gpu else ["fp32", "--threads", "1"]
    argv += QUICK_STEP if ctx.quick else ["--compile", "both", "--profile"]   # compiled rows last (its order)
    rc, text = run_logged(argv, log, ctx)
    parsed = parse_train_step(text)
    if not any("images_per_s" in r for r in parsed["rows"].values()):
        raise RuntimeError(f"no 'detr_nb train step' line (exit status {rc}): {last_line(text)}")
    rec.update(parsed, targets=against_targets(parsed), targets_apply=ctx.gpu and "batch 8 at 800x1088" in text)
    if rc != 0:
        raise RuntimeError(f"exit status {rc} after the rows above: {last_line(text)}")


# ----------------------------------------------------------------------------------------- 4. notebook 07
def part_notebook(ctx: Context, log: Path, rec: dict) -> None:
    argv = [sys.executable, "bench/notebook_times.py", "07", "--full", "--keep", ctx.out / "nb"]
    rc, text = run_logged(argv, log, ctx)
    m = re.search(r"^(07_\S+)\s+([\d.]+) s$", text, re.M)
    if rc != 0 or not m:
        raise RuntimeError(f"exit status {rc}: {last_line(text)}")
    rec.update(notebook=m[1], wall_s=float(m[2]), kept=str(ctx.out / "nb" / f"{m[1]}.ipynb"))


PARTS = [Part("1", "correctness on CUDA (tests/test_cuda.py)", 120, 20, part_correctness),
         Part("2", "the T4 policy on this GPU (the main job, --amp fp16)", PART2_S, 40, part_t4_policy),
         Part("3", "throughput (bench/train_step.py)", 330, 20, part_throughput),
         Part("4", "notebook 07 in full mode (bench/notebook_times.py)", 720, None, part_notebook)]


# ----------------------------------------------------------------------------------------- the run, the summary
def describe_device(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_cores": os.cpu_count(),
            "name": f"CPU ({os.cpu_count()} cores)"}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 2**30, 1))
    return info


def run_part(part: Part, ctx: Context, rec: dict) -> None:
    """Fill ``rec`` with one part's results (what it measured before a failure included), or why it was skipped."""
    need = part.quick_s if ctx.quick else part.full_s
    if need is None or need > ctx.left():
        rec.update(status="skipped", reason="--quick: notebook 07's full mode trains 1,500 steps" if need is None
                   else f"would not fit: needs about {need} s, {max(0, ctx.left()):.0f} s left of --max-minutes "
                        f"{ctx.args.max_minutes:g}")
        return
    t, rec["status"] = time.monotonic(), "stopped"      # what a script stopped during the part leaves
    try:
        part.run(ctx, ctx.out / rec["log"], rec)
        rec["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a part's failure is recorded and the next part runs
        rec.update(status="failed", error=f"{type(e).__name__}: {str(e)[:500]}")
    finally:
        rec["part_s"] = round(time.monotonic() - t, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu", help="folder of the logs and summary.json / summary.md")
    p.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds per part (the CPU test)")
    p.add_argument("--parts", nargs="+", default=[q.number for q in PARTS], choices=[q.number for q in PARTS])
    p.add_argument("--max-minutes", type=float, default=13.0, help="budget of the whole script")
    p.add_argument("--cpu-steps-per-s", type=float, default=None, help="part 2's CPU figure, instead of a CPU run")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of part 2's GPU runs")
    args = p.parse_args(argv)
    from detr_nb.config import resolve_device
    from detr_nb.errors import UserError
    try:
        device = resolve_device(args.device)
    except UserError as e:                 # --device cuda on a machine without a GPU: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    ctx = Context(args, device)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # a stopped script stops its command too (finally)
    ctx.out.mkdir(parents=True, exist_ok=True)
    path = ctx.out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {"parts": {}}   # --parts adds to it
    summary.update(device=describe_device(device), quick=args.quick, max_minutes=args.max_minutes)
    try:
        for part in (q for q in PARTS if q.number in args.parts):
            print(f"part {part.number}: {part.title} ...", flush=True)
            rec = summary["parts"][part.number] = {"title": part.title, "log": f"part{part.number}.log"}
            run_part(part, ctx, rec)
            print(f"part {part.number}: {rec['status']} {rec.get('reason') or rec.get('error') or ''}", flush=True)
            write_summary(ctx.out, summary)
    finally:
        write_summary(ctx.out, summary)
    print(f"summary: {(ctx.out / 'summary.md').resolve()}")
    return 0


def fmt(value, spec=".1f") -> str:
    return "-" if value is None else format(value, spec)


def t4_estimate(what: str, seconds: float) -> str:
    return (f"{what}: {seconds * 1e3:.1f} ms measured x {T4_RATIO:.1f} = {seconds * T4_RATIO * 1e3:.0f} ms on a T4 "
            f"if compute-bound")


def md_part2(rec: dict) -> list:
    lines = ["| run | device, precision | steps/s | images/s (median) | peak memory | of a T4's 15 GB | AP | AP50 | steps"
             " |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rec["runs"]:
        mem = r.get("peak_mem_mb")
        name = r["name"] + (f" ({r['source']})" if "source" in r else "")
        lines.append(f"| {name} | {r['device']}, {r.get('precision', '-')} | {fmt(r['steps_per_s'], '.2f')} | "
                     f"{fmt(r.get('images_per_s'))} | {fmt(mem, '.0f')} MiB | {fmt(r.get('of_t4_memory'), '.1%')} | "
                     f"{fmt(r.get('AP'), '.4f')} | {fmt(r.get('AP50'), '.4f')} | {r.get('steps', '-')} |")
    ratio = rec.get("gpu_over_cpu")
    if ratio is not None:
        lines += ["", f"GPU / CPU steps/s: {ratio:.1f}x (threshold {GPU_OVER_CPU:g}x): " +
                  ("the GPU is worth it for the main job." if ratio >= GPU_OVER_CPU else
                   "the main job's small model leaves the GPU idle; a larger recipe is measured as well.")]
    lines += [rec["larger"]] if "larger" in rec else []
    for r in [r for r in rec["runs"][:1] + rec["runs"][2:] if r["device"] != "cpu" and r["steps_per_s"] > 0]:
        sps = r["steps_per_s"]                                  # a T4 estimated from a GPU's runs only
        lines.append(f"- {t4_estimate(r['name'] + ', one step', 1 / sps)}: {sps / T4_RATIO:.2f} steps/s, "
                     f"{NOTEBOOK_STEPS / (sps / T4_RATIO) / 60:.1f} min for notebook 07's {NOTEBOOK_STEPS} steps.")
    return lines


def md_part3(rec: dict) -> list:
    lines = ["| row | detr_nb images/s | backbone-only | detr_nb / backbone | HF DETR | detr_nb / HF |",
             "|---|---|---|---|---|---|"]
    for tag, r in rec["rows"].items():
        ips = r.get("images_per_s")
        ratio = (lambda k: fmt(ips / r[k], ".2f") if ips and k in r else "-")
        lines.append(f"| {tag} | {fmt(ips)} | {fmt(r.get('backbone'))} | {ratio('backbone')} | {fmt(r.get('hf'))} | "
                     f"{ratio('hf')} |")
    lines += ["", "| inference | batch | size | images/s |", "|---|---|---|---|"]
    lines += [f"| {i['tag']} | {i['batch']} | {i['size']} | {i['images_per_s']:.1f} |" for i in rec["inference"]]
    lines += ["", "| issue 9 target | measured | needed | |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']:.2f} | {t['needed']:g} | {'met' if t['met'] else 'NOT met'} |"
              for t in rec["targets"]]
    lines.append("" if rec["targets_apply"] else
                 "\n(not the targets' setting, batch 8 at 800x1088 on a GPU: the comparison does not apply)\n")
    t4 = [(t, r["images_per_s"]) for t, r in rec["rows"].items() if t.startswith("fp16") and "images_per_s" in r]
    lines += [f"- {t4_estimate(f'T4 policy ({tag}), one image', 1 / ips)}: {ips / T4_RATIO:.1f} images/s."
              for tag, ips in t4]                            # the T4 policy's rows, estimated for a T4
    return lines + [f"- {n}" for n in rec["notes"]]


MD_PARTS = {   # part -> (the key its results have, what draws them)
    "1": ("pytest", lambda r: [f"pytest: {r['pytest']}"] + [f"- failed: `{t}`" for t in r["failed_tests"]]),
    "2": ("runs", md_part2), "3": ("rows", md_part3),
    "4": ("notebook", lambda r: [f"{r['notebook']}: {r['wall_s']:.0f} s in full mode; executed: `{r['kept']}`"])}


def markdown(s: dict) -> str:
    """summary.md: what docs/speed.md takes, part by part."""
    d = s["device"]
    lines = [f"## GPU check: {d['name']}" + (f" (compute capability {d['capability']}, {d['memory_gb']} GB)"
                                            if "capability" in d else ""), "",
             f"torch {d['torch']}, CUDA {d['cuda']}, {d['cpu_cores']} CPU cores; `bench/gpu_check.py`"
             f"{' --quick' if s['quick'] else ''}, budget {s['max_minutes']:g} minutes.", "",
             "| part | result | time |", "|---|---|---|"]
    for n, rec in sorted(s["parts"].items()):
        lines.append(f"| {n}. {rec['title']} | {rec['status']} | {fmt(rec.get('part_s'), '.0f')} s |")
    for n, rec in sorted(s["parts"].items()):
        lines += ["", f"### {n}. {rec['title']}", ""]
        if rec["status"] == "skipped":
            lines.append(f"Skipped: {rec['reason']}.")
            continue
        if rec["status"] != "ok":
            lines.append(f"**{rec['status']}**: {rec.get('error', 'the script was stopped during this part')} "
                         f"(log: `{rec['log']}`)\n")
        key, draw = MD_PARTS[n]
        lines += draw(rec) if key in rec else []
    lines += ["", f"T4 estimates: measured time x {T4_RATIO:.1f}, the ratio of the fp16 dense-matmul peaks (H100 SXM "
              f"~{H100_TFLOPS:.0f} TFLOPS, which an H200 shares; T4 {T4_TFLOPS:.0f}). Right for a compute-bound step "
              f"only: a small model is not compute-bound (kernel launches and host work dominate), so its T4 time is "
              f"less than the estimate, plus what Colab's slower 2-core host adds."]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(markdown(summary))


if __name__ == "__main__":
    sys.exit(main())
