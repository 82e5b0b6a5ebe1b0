"""Box ops against torchvision.ops on random and edge-case boxes."""
import torch
from torchvision import ops

from detr_nb.models.box_ops import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou


def random_xyxy(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g)
    wh = torch.rand(n, 2, generator=g) * 0.5 + 0.01
    return torch.cat([xy, xy + wh], -1)


# identical, disjoint, nested, touching (edge and corner), partially overlapping
EDGE_A = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 6)
EDGE_B = torch.tensor([
    [0.0, 0.0, 1.0, 1.0],  # identical
    [2.0, 2.0, 3.0, 3.0],  # disjoint
    [0.25, 0.25, 0.5, 0.5],  # nested
    [1.0, 0.0, 2.0, 1.0],  # touching along an edge
    [1.0, 1.0, 2.0, 2.0],  # touching at a corner
    [0.5, 0.5, 1.5, 1.5],  # overlapping
])


def test_format_conversions_match_torchvision():
    xyxy = random_xyxy(50)
    cxcywh = ops.box_convert(xyxy, "xyxy", "cxcywh")
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy)


def test_area_matches_torchvision():
    xyxy = random_xyxy(30, seed=1)
    torch.testing.assert_close(box_area(xyxy), ops.box_area(xyxy))


def test_iou_and_giou_random_match_torchvision():
    a, b = random_xyxy(20, seed=2), random_xyxy(13, seed=3)
    iou, union = box_iou(a, b)
    torch.testing.assert_close(iou, ops.box_iou(a, b))
    inter = iou * union
    torch.testing.assert_close(union, ops.box_area(a)[:, None] + ops.box_area(b)[None] - inter)
    torch.testing.assert_close(generalized_box_iou(a, b), ops.generalized_box_iou(a, b))


def test_edge_cases_match_torchvision_and_known_values():
    iou = box_iou(EDGE_A, EDGE_B)[0].diagonal()
    giou = generalized_box_iou(EDGE_A, EDGE_B).diagonal()
    torch.testing.assert_close(iou, ops.box_iou(EDGE_A, EDGE_B).diagonal())
    torch.testing.assert_close(giou, ops.generalized_box_iou(EDGE_A, EDGE_B).diagonal())
    expected_iou = torch.tensor([1.0, 0.0, 0.0625, 0.0, 0.0, 0.25 / 1.75])
    torch.testing.assert_close(iou, expected_iou)
    assert giou[0] == 1.0
    torch.testing.assert_close(giou[1], torch.tensor(0.0 - (9.0 - 2.0) / 9.0))  # disjoint: negative
    torch.testing.assert_close(giou[3], torch.tensor(0.0))  # touching: enclosing box == union
    assert (giou >= -1).all() and (giou <= 1).all()


def test_zero_area_handling_is_documented_behaviour():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])  # zero-area box inside the unit box
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert box_iou(point, unit)[0].item() == 0.0  # finite against a real box
    assert torch.isfinite(generalized_box_iou(point, unit)).all()
    assert torch.isnan(box_iou(point, point)[0]).all()  # 0 / 0, like torchvision
    assert torch.isnan(ops.box_iou(point, point)).all()


def test_batched_broadcasting_equals_per_image():
    a = torch.stack([random_xyxy(5, seed=s) for s in range(3)])  # (3, 5, 4)
    b = torch.stack([random_xyxy(4, seed=10 + s) for s in range(3)])  # (3, 4, 4)
    batched = generalized_box_iou(a, b)  # (3, 5, 4)
    assert batched.shape == (3, 5, 4)
    for i in range(3):
        torch.testing.assert_close(batched[i], ops.generalized_box_iou(a[i], b[i]))


def test_giou_gradient_matches_torchvision():
    a = random_xyxy(6, seed=4).requires_grad_()
    b = random_xyxy(6, seed=5)
    a2 = a.detach().clone().requires_grad_()
    generalized_box_iou(a, b).sum().backward()
    ops.generalized_box_iou(a2, b).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad)
