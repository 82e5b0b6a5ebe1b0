"""The precision policy (detr_nb.config.amp_dtype, the trainer's GradScaler): fp16 + GradScaler below compute
capability 8.0 (a T4), bf16 from 8.0, fp32 on the CPU; an explicit --amp wins on CUDA, the CPU stays fp32."""
import pytest
import torch

from detr_nb.config import amp_dtype

CUDA = torch.device("cuda")


@pytest.fixture
def capability(monkeypatch):
    """Pretend the CUDA device has the compute capability set in the returned dict."""
    cap = {"value": (7, 5)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap["value"])
    return cap


def test_cpu_is_fp32():
    for amp in ("auto", "fp32", "fp16", "bf16"):
        assert amp_dtype(torch.device("cpu"), amp) is None, amp


def test_auto_is_fp16_below_8_0_and_bf16_from_8_0(capability):
    for cap, dtype in (((7, 5), torch.float16), ((7, 0), torch.float16), ((8, 0), torch.bfloat16),
                       ((8, 9), torch.bfloat16), ((9, 0), torch.bfloat16), ((10, 0), torch.bfloat16)):
        capability["value"] = cap
        assert amp_dtype(CUDA, "auto") == dtype, cap


def test_explicit_choices_win_on_cuda(capability):
    capability["value"] = (9, 0)
    assert amp_dtype(CUDA, "fp32") is None
    assert amp_dtype(CUDA, "fp16") == torch.float16
    capability["value"] = (7, 5)
    assert amp_dtype(CUDA, "bf16") == torch.bfloat16


def test_grad_scaler_only_under_fp16(tmp_path, data_root, monkeypatch, one_thread):
    """The trainer enables GradScaler exactly when the forward pass runs in fp16 (bf16 needs none)."""
    import detr_nb.trainer as T
    from engine_utils import tiny_config

    for dtype, scaled in ((None, False), (torch.bfloat16, False), (torch.float16, True)):
        monkeypatch.setattr(T, "amp_dtype", lambda device, amp, d=dtype: d)
        tr = T.Trainer(tiny_config(tmp_path / str(dtype), data_root))
        tr.close()
        assert tr.dtype == dtype and tr.scaler.is_enabled() == scaled, dtype
