"""Precision policy: fp16+GradScaler below compute capability 8.0, bf16 from 8.0, fp32 on CPU."""
import torch

from detr_nb.engine.precision import resolve_precision


def test_cpu_is_fp32():
    p = resolve_precision("cpu")
    assert p.dtype is None and not p.use_scaler and p.name == "fp32"
    assert not p.make_scaler().is_enabled()
    with p.autocast():
        assert torch.ones(2, 2).mm(torch.ones(2, 2)).dtype == torch.float32


def test_t4_is_fp16_with_scaler():
    p = resolve_precision("cuda", capability=(7, 5))
    assert p.dtype == torch.float16 and p.use_scaler and p.name == "fp16"


def test_ampere_and_later_is_bf16():
    for cap in [(8, 0), (8, 9), (9, 0), (10, 0)]:
        p = resolve_precision("cuda", capability=cap)
        assert p.dtype == torch.bfloat16 and not p.use_scaler


def test_explicit_choices():
    assert resolve_precision("cuda", "fp32", capability=(9, 0)).dtype is None
    assert resolve_precision("cuda", "fp16", capability=(9, 0)).use_scaler
    assert resolve_precision("cpu", "bf16").dtype is None  # CPU stays fp32
