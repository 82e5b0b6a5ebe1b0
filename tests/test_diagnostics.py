"""Training diagnostics (detr_nb.teach.diagnostics): a trainer callback recording per-layer gradient and weight
statistics at an interval, weight histograms of a model or a checkpoint, and their figures."""
import json
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from detr_nb.checkpoint import CheckpointManager  # noqa: E402
from detr_nb.teach.diagnostics import (GradientStats, plot_histograms, plot_layer_series, read_jsonl,  # noqa: E402
                                       weight_histograms)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_records_at_interval_match_torch_and_a_resumed_session_replaces_its_steps(tmp_path):
    model = _model()
    trainer = SimpleNamespace(model=model, out=tmp_path, step=0)
    stats = GradientStats(every=2)
    for step in range(1, 6):
        model.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        trainer.step = step
        stats(trainer)
        if step == 4:
            rec, w = stats.records[-1], model[0].weight
            assert abs(rec["grad_std"]["0.weight"] - float(w.grad.std())) < 1e-6
            assert abs(rec["weight_sum"]["2.weight"] - float(model[2].weight.detach().sum())) < 1e-5
            assert abs(rec["weight_std"]["0.weight"] - float(w.detach().std())) < 1e-6
    assert [r["step"] for r in stats.records] == [2, 4]
    assert [r["step"] for r in read_jsonl(tmp_path / "diagnostics.jsonl")] == [2, 4]
    assert set(stats.records[0]["grad_std"]) == {"0.weight", "2.weight"}     # weights only (dim >= 2)
    resumed = SimpleNamespace(model=model, out=tmp_path, step=3)               # a session resumed at step 2
    again = GradientStats(every=2)
    again(resumed)
    resumed.step = 4
    again(resumed)
    assert [r["step"] for r in read_jsonl(tmp_path / "diagnostics.jsonl")] == [2, 4]   # step 4 once
    for key in ("grad_std", "weight_sum"):
        assert len(plot_layer_series(stats.records, key).axes[0].get_lines()) == 2


def test_histograms_from_model_and_checkpoint(tmp_path):
    model = _model()
    h = weight_histograms(model, bins=10)
    assert set(h) == {"0.weight", "2.weight"} and sum(h["0.weight"]["counts"]) == 32
    CheckpointManager(tmp_path).save({"model": model.state_dict(), "step": 1, "epoch": 0})
    assert weight_histograms(tmp_path / "last.pth", bins=10)["0.weight"]["counts"] == h["0.weight"]["counts"]
    assert plot_histograms(h, title="init").axes
    json.dumps(h)  # serialisable
