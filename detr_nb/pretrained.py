"""The released DETR checkpoints: where they are, how they are verified, how they load. Notebooks 04, 09, 11."""
from __future__ import annotations

import re
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn

_BASE = "https://dl.fbaipublicfiles.com/detr/"
# name -> URL. The hex in each file name is a prefix of the file's sha256 (torch.hub's check_hash).
CHECKPOINTS: Dict[str, str] = {
    "detr_r50": _BASE + "detr-r50-e632da11.pth",
    "detr_r50_dc5": _BASE + "detr-r50-dc5-f0fb7ef5.pth",
    "detr_r101": _BASE + "detr-r101-2c7b67e5.pth",
    "detr_r101_dc5": _BASE + "detr-r101-dc5-a2e86def.pth",
}
CLASS_HEAD = ("class_embed.weight", "class_embed.bias")


# COCO 2017 category ids -> names (ids run 1..90 with gaps; DETR's head has 91 + 1 outputs).
COCO_CLASSES: Dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}

def sha256_prefix(url: str) -> Optional[str]:
    """The hash prefix in a checkpoint file name (``detr-r50-e632da11.pth`` -> ``e632da11``)."""
    m = re.search(r"-([a-f0-9]+)\.", url.rsplit("/", 1)[-1])
    return m.group(1) if m else None


def load_pretrained(model: nn.Module, name: str = "detr_r50", *, url: Optional[str] = None,
                    map_location="cpu", progress: bool = True) -> nn.Module:
    """Download (once, into torch.hub's cache), verify (sha256 prefix) and load an official checkpoint.

    If the model's class head differs from the checkpoint's (another ``num_classes``), the class
    head is left as initialised, a warning says so, and everything else loads strictly: the usual
    way to fine-tune on a new dataset. Any other key or shape mismatch raises ValueError naming
    the keys. ``url`` overrides the URL (e.g. ``file:///path/detr-r50-<sha256 prefix>.pth``).
    """
    official = url is None
    if official:
        if name not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}")
        url = CHECKPOINTS[name]
    if sha256_prefix(url) is None:
        raise ValueError(f"checkpoint file name must carry its sha256 prefix (name-<hex>.pth), got {url!r}")
    _warn_if_other_architecture(model, name if official else None)
    ckpt = torch.hub.load_state_dict_from_url(url, map_location=map_location, progress=progress,
                                              check_hash=True, weights_only=True)
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    load_checkpoint_state(model, state)
    return model


def load_checkpoint_state(model: nn.Module, state: Dict[str, torch.Tensor]) -> List[str]:
    """Load a DETR state dict strictly, but for what fine-tuning changes, each said in one line: a class head of
    another size is left as initialised (new classes), and object queries of another number are the first rows
    of the checkpoint's (fewer) or initialised afresh (more). Returns the keys not loaded as they were."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    state, skipped = dict(state), []
    if mismatched and set(mismatched) <= set(CLASS_HEAD) | {"query_embed.weight"}:
        if "class_embed.weight" in mismatched:
            outputs = (state["class_embed.weight"].shape[0], own["class_embed.weight"].shape[0])
            skipped += [k for k in CLASS_HEAD if state.pop(k, None) is not None]
            warnings.warn("the checkpoint's class head has %d outputs, the model's %d (num_classes + 1): class_embed "
                          "is left as initialised, to be fine-tuned; the other weights are loaded" % outputs,
                          stacklevel=3)
        if "query_embed.weight" in mismatched:
            theirs, ours = state["query_embed.weight"].shape[0], own["query_embed.weight"].shape[0]
            if ours < theirs:
                state["query_embed.weight"] = state["query_embed.weight"][:ours]
            else:
                del state["query_embed.weight"]
                skipped.append("query_embed.weight")
            warnings.warn(f"the checkpoint has {theirs} object queries, the model {ours}: " +
                          (f"the first {ours} are kept" if ours < theirs else "the model's are initialised afresh"),
                          stacklevel=3)
        mismatched = []
    if missing or unexpected or mismatched:
        msg = ["checkpoint does not fit the model:"]
        for title, keys in (("missing in checkpoint", missing), ("unexpected in checkpoint", unexpected)):
            if keys:
                msg.append(f"  {title} ({len(keys)}): {_short(keys)}")
        if mismatched:
            msg.append(f"  shape mismatch ({len(mismatched)}): " + _short(
                [f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]))
        raise ValueError("\n".join(msg))
    model.load_state_dict(state, strict=not skipped)
    return skipped


def available(name: str, timeout: float = 3.0) -> Optional[str]:
    """None when the released checkpoint ``name`` can be had (in torch.hub's cache, or its URL answers), else
    why not, in a few words."""
    url = CHECKPOINTS[name]
    if (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file():
        return None
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except (OSError, ValueError) as e:   # no network, a refused or unknown host, an HTTP error
        reason = getattr(e, "reason", None) or e
        return f"{urllib.parse.urlsplit(url).netloc} cannot be reached ({getattr(reason, 'strerror', None) or reason})"
    return None


def _warn_if_other_architecture(model: nn.Module, name: Optional[str]) -> None:
    """DC5 and non-DC5 checkpoints have the same keys and shapes (every other difference of architecture
    fails the strict load): catch that mix-up by the model's config."""
    dilated = getattr(getattr(model, "config", None), "dilation", None)
    if name is not None and dilated is not None and dilated != name.endswith("_dc5"):
        warnings.warn(f"{name} was trained with{'' if name.endswith('_dc5') else 'out'} a dilated last stage (DC5); "
                      f"this model has dilation={dilated}", stacklevel=3)


def _short(items: List[str], n: int = 10) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
