"""postprocess: official PostProcess numbers, all queries kept, threshold for display."""
import pytest
import torch
from torchvision import ops

from detr_nb.setpred.postprocess import postprocess


def make_outputs(B=2, Q=5, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(B, Q, C + 1, generator=g) * 3, "pred_boxes": torch.rand(B, Q, 4, generator=g)}


def test_matches_per_image_reference():
    outputs = make_outputs()
    sizes = torch.tensor([[480, 640], [300, 200]])
    results = postprocess(outputs, sizes)
    assert len(results) == 2
    for i, r in enumerate(results):
        prob = outputs["pred_logits"][i].softmax(-1)
        assert r["scores"].shape == (5,) and r["labels"].dtype == torch.int64  # every query kept
        for q in range(5):
            best = int(prob[q, :-1].argmax())  # "no object" (last column) never wins
            assert int(r["labels"][q]) == best
            assert float(r["scores"][q]) == pytest.approx(float(prob[q, best]))
        h, w = sizes[i].tolist()
        expected = ops.box_convert(outputs["pred_boxes"][i], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        torch.testing.assert_close(r["boxes"], expected)


def test_known_box_and_list_sizes():
    outputs = {"pred_logits": torch.zeros(1, 1, 3), "pred_boxes": torch.tensor([[[0.5, 0.5, 1.0, 1.0]]])}
    r, = postprocess(outputs, [(100, 200)])
    torch.testing.assert_close(r["boxes"], torch.tensor([[0.0, 0.0, 200.0, 100.0]]))
    assert float(r["scores"][0]) == pytest.approx(1 / 3)


def test_threshold_keeps_confident_queries_only():
    outputs = make_outputs(seed=1)
    full = postprocess(outputs, [(10, 10), (10, 10)])
    shown = postprocess(outputs, [(10, 10), (10, 10)], threshold=0.5)
    for f, s in zip(full, shown):
        keep = f["scores"] > 0.5
        assert torch.equal(s["scores"], f["scores"][keep]) and torch.equal(s["boxes"], f["boxes"][keep])


def test_another_scoring_and_bad_shapes():
    """A focal-loss model's scoring plugs in: its sigmoid per class (no "no object" column), one per query."""
    from detr_nb.aids.focal import sigmoid_scores
    outputs = make_outputs(seed=2)
    r = postprocess(outputs, [(1, 1)] * 2, scoring=sigmoid_scores)
    torch.testing.assert_close(r[0]["scores"], outputs["pred_logits"][0, :, :-1].sigmoid().max(-1).values)
    with pytest.raises(ValueError, match="target_sizes"):
        postprocess(outputs, [(1, 1)])
    with pytest.raises(ValueError, match="pred_boxes"):
        postprocess({**outputs, "pred_boxes": outputs["pred_boxes"][:, :3]}, [(1, 1)] * 2)


def test_bf16_outputs_give_float32_results():
    outputs = {k: v.bfloat16() for k, v in make_outputs(seed=3).items()}
    r = postprocess(outputs, torch.tensor([[50, 60], [70, 80]]))
    assert r[0]["scores"].dtype == torch.float32 and r[0]["boxes"].dtype == torch.float32
