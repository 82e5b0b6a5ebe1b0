"""Diagnostics: per-layer gradient std / weight stats recorded at an interval, histograms, plots."""
import json

import matplotlib
matplotlib.use("Agg")
import torch
from torch import nn

from detr_nb.engine import checkpoint as ck
from detr_nb.engine.diagnostics import GradientStats, read_records, weight_histograms
from detr_nb.figures.training import plot_grad_std, plot_histograms, plot_weight_sum


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_records_at_interval_match_torch(tmp_path):
    model = _model()
    stats = GradientStats(model, every=2, path=tmp_path / "d.jsonl")
    for step in range(1, 6):
        model.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        rec = stats.maybe_record(model, step)
        if step == 4:
            w = model[0].weight
            assert abs(rec["grad_std"]["0.weight"] - float(w.grad.std())) < 1e-6
            assert abs(rec["weight_sum"]["2.weight"] - float(model[2].weight.detach().sum())) < 1e-5
            assert abs(rec["weight_std"]["0.weight"] - float(w.std())) < 1e-6
    assert [r["step"] for r in stats.records] == [2, 4]
    assert [r["step"] for r in read_records(tmp_path / "d.jsonl")] == [2, 4]
    assert set(stats.records[0]["grad_std"]) == {"0.weight", "2.weight"}  # weights only (dim >= 2)
    for fn in (plot_grad_std, plot_weight_sum):
        assert fn(stats.records).axes


def test_histograms_from_model_and_checkpoint(tmp_path):
    model = _model()
    h = weight_histograms(model, bins=10)
    assert set(h) == {"0.weight", "2.weight"} and sum(h["0.weight"]["counts"]) == 32
    mgr = ck.CheckpointManager(tmp_path)
    mgr.save({"model": model.state_dict(), "step": 1, "epoch": 0})
    h2 = weight_histograms(tmp_path / "last.pth", bins=10)
    assert h2["0.weight"]["counts"] == h["0.weight"]["counts"]
    assert plot_histograms(h, title="init").axes
    json.dumps(h)  # serialisable
