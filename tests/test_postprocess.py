"""PostProcess: the official scoring, every query kept; the aids' top (query, class) pairs."""
import pytest
import torch
from torchvision import ops

from detr_nb.aids import AidedPostProcess
from detr_nb.models import PostProcess


def make_outputs(B=2, Q=5, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(B, Q, C + 1, generator=g) * 3, "pred_boxes": torch.rand(B, Q, 4, generator=g)}


def test_the_official_scoring_image_by_image():
    outputs = make_outputs()
    sizes = torch.tensor([[480, 640], [300, 200]])
    for i, r in enumerate(PostProcess()(outputs, sizes)):
        prob = outputs["pred_logits"][i].softmax(-1)
        assert r["scores"].shape == (5,) and r["labels"].dtype == torch.int64   # every query kept
        torch.testing.assert_close(r["labels"], prob[:, :-1].argmax(-1))          # "no object" never wins
        torch.testing.assert_close(r["scores"], prob[:, :-1].max(-1).values)
        h, w = sizes[i].tolist()
        torch.testing.assert_close(r["boxes"], ops.box_convert(outputs["pred_boxes"][i], "cxcywh", "xyxy")
                                   * torch.tensor([w, h, w, h]))


def test_a_known_box_in_pixels_and_bf16_outputs_in_float32():
    outputs = {"pred_logits": torch.zeros(1, 1, 3), "pred_boxes": torch.tensor([[[0.5, 0.5, 1.0, 1.0]]])}
    r, = PostProcess()(outputs, torch.tensor([(100, 200)]))
    torch.testing.assert_close(r["boxes"], torch.tensor([[0.0, 0.0, 200.0, 100.0]]))
    assert float(r["scores"][0]) == pytest.approx(1 / 3)
    r, = PostProcess()({k: v.bfloat16() for k, v in outputs.items()}, torch.tensor([(100, 200)]))
    assert r["scores"].dtype == r["boxes"].dtype == torch.float32


def test_aided_scoring_keeps_the_best_query_class_pairs():
    logits = torch.full((1, 3, 3), -9.0)
    logits[0, 0, :2] = torch.tensor([4.0, 3.0])   # query 0: both classes likely
    logits[0, 2, 1] = 2.0
    logits[..., 2] = 9.0                          # the unused "no object" column is left out
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.3, 0.6, 0.2, 0.4]]])
    r, = AidedPostProcess()({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[10, 20]]))
    assert len(r["scores"]) == 6 and r["labels"][:3].tolist() == [0, 1, 1]   # query 0 twice, then query 2
    torch.testing.assert_close(r["scores"][:3], torch.sigmoid(torch.tensor([4.0, 3.0, 2.0])))
    paper = PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[10, 20]]))[0]
    torch.testing.assert_close(r["boxes"][1], paper["boxes"][0])             # the second pair is query 0's box
    torch.testing.assert_close(r["boxes"][2], paper["boxes"][2])
