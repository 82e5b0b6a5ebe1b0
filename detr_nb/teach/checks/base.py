"""How a "Your turn" check works (the checks themselves are in :mod:`detr_nb.teach.checks`).

A check runs the learner's function and the package's reference on the same inputs, one :class:`Case` at a
time, and compares the values (and, where the piece is differentiable, the gradients of a fixed random
upstream gradient with respect to the float inputs). At the first case that differs it raises an
``AssertionError`` of one line: the case, the first differing element with both values, and the likely cause.
The cause is found by computing the classic mistakes of the piece (variants of the reference) on the same
inputs and naming the one the learner's result equals; failing that, generic clues (a constant factor, two
axes swapped, the expected shape, NaN, float32 rounding).
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

NOT_WRITTEN = "not written yet: write it in the cell above (a solution is in the hidden cell below)"
NEARLY = ("within 0.1% of the reference but not within the check's tolerance: a small constant added somewhere "
          "(an eps in a denominator larger than 1e-6?) or float32 arithmetic")


@dataclass
class Case:
    """One set of inputs, in the learner's argument order. ``grad`` False where gradients are not compared (the
    reference sits on a kink there: a tie of max/min, a clamp at exactly 0); ``hint``, for an edge case, is
    said when this case fails (what the reference does there)."""
    name: str
    args: tuple
    grad: bool = True
    hint: str = ""


@dataclass
class Piece:
    """What a check compares. ``mistakes`` are ``(hint, variant)`` pairs, each variant a classic mistake with the
    reference's signature; ``grad_args`` the positions of the inputs to differentiate; ``parts`` the names of
    the results when the function returns a tuple (``shape_doc`` then one string per part); ``number`` when it
    returns one number."""
    title: str
    reference: Callable
    ref_name: str
    arg_names: Sequence[str]
    grad_args: Sequence[int] = ()
    mistakes: Sequence[Tuple[str, Callable]] = ()
    shape_doc: Union[str, Sequence[str]] = ""
    parts: Sequence[str] = ()
    number: bool = False
    rtol: float = 1e-6
    atol: float = 1e-9
    hint: str = "compare your code with the formula in the cell above"

    def names(self) -> List[str]:
        """The prefix of each part in a message: "image: " ..., or "" for a single result."""
        return [f"{p}: " for p in self.parts] if self.parts else [""]

    def doc(self, part: int) -> str:
        """The symbolic shape of a result (of one part of it), with a leading space; "" when there is none."""
        doc = self.shape_doc if isinstance(self.shape_doc, str) else self.shape_doc[part]
        return f" {doc}" if doc else ""


class NotWritten(Exception):
    """The learner's function still raises NotImplementedError (the skeleton)."""


def randn(seed_or_gen, *shape, scale: float = 1.0) -> Tensor:
    """float64 normal samples (tolerances can then be tight) from a generator or a seed."""
    g = seed_or_gen if isinstance(seed_or_gen, torch.Generator) else torch.Generator().manual_seed(seed_or_gen)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def run_check(title: str, jobs: Sequence[Tuple[Piece, Callable, List[Case]]]) -> bool:
    """Run each ``(piece, fn, cases)``; print the ✓ line and return True, or print the "not written yet" line
    and return False. Any other difference raises the one-line ``AssertionError``."""
    for piece, fn, cases in jobs:
        try:
            for i, case in enumerate(cases, 1):
                run_case(piece, fn, case, f"case {i}: {case.name}")
        except NotWritten:
            print(f"… {piece.title} {NOT_WRITTEN}")
            return False
    n = sum(len(cases) for _, _, cases in jobs)
    what = "values and gradients" if all(p.grad_args for p, _, _ in jobs) else "values"
    print(f"✓ {title}: {n} cases, {what} match {' and '.join(p.ref_name for p, _, _ in jobs)}")
    return True


def run_case(piece: Piece, fn: Callable, case: Case, label: str) -> None:
    """One case: values, then gradients; raises AssertionError (or NotWritten) on the first problem."""
    grad = case.grad and bool(piece.grad_args)
    mine, theirs = inputs(piece, case, grad), inputs(piece, case, grad)
    want = as_parts(piece, piece.reference(*mine))
    try:
        result = fn(*theirs)
    except NotImplementedError:
        raise NotWritten from None
    except Exception as e:      # the learner's bug: one line that names it and the case
        raise AssertionError(f"{label}: your function raised {type(e).__name__}: {one_line(e)}") from e
    got = as_parts(piece, result, want, label)
    for i, (name, g, w) in enumerate(zip(piece.names(), got, want)):
        problem = difference(g, w, piece.rtol, piece.atol)
        if problem:
            raise AssertionError(f"{label}: {name}{problem}: {diagnose(piece, case, got, want, i)}")
    if grad:
        compare_gradients(piece, label, mine, theirs, want, got)


def inputs(piece: Piece, case: Case, grad: bool) -> list:
    """Fresh copies of the case's arguments (a learner's in-place change cannot leak), the float inputs in
    ``grad_args`` as leaves that require grad; modules are deep-copied."""
    out = []
    for i, a in enumerate(case.args):
        if isinstance(a, Tensor):
            a = a.detach().clone().requires_grad_(grad and i in piece.grad_args and a.is_floating_point())
        elif isinstance(a, torch.nn.Module):
            a = copy.deepcopy(a)
        out.append(a)
    return out


def one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else "(no message)"


def as_parts(piece: Piece, result, want: Optional[List[Tensor]] = None, label: str = "") -> List[Tensor]:
    """A result as a list of tensors, one per part; for the learner's (``want`` given) a wrong type fails."""
    if piece.number:
        if isinstance(result, (Tensor, np.ndarray)) and torch.as_tensor(result).numel() == 1:   # 0.5 as a tensor
            return [torch.as_tensor(result).detach().double().reshape(())]
        if isinstance(result, numbers.Real) and not isinstance(result, bool):
            return [torch.tensor(float(result), dtype=torch.float64)]
        if want is not None:
            raise AssertionError(f"{label}: returned {kind(result)}, expected one number (a float)")
    items = list(result) if piece.parts and isinstance(result, (tuple, list)) else [result]
    if want is not None and len(items) != len(want):
        raise AssertionError(f"{label}: returned {kind(result)}, expected a tuple ({', '.join(piece.parts)})")
    for i, (name, item, w) in enumerate(zip(piece.names(), items, want or items)):
        if want is not None and not isinstance(item, Tensor):
            raise AssertionError(f"{label}: {name}returned {kind(item)}, expected a tensor of shape "
                                 f"{tuple(w.shape)}{piece.doc(i)}")
    return items


def kind(x) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    return "None" if x is None else f"a {type(x).__name__}"


def difference(got: Tensor, want: Tensor, rtol: float, atol: float) -> Optional[str]:
    """None when ``got`` equals ``want`` within the tolerances, else where and by how much they differ."""
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    g, w = got.detach().double(), want.detach().double()
    close = torch.isclose(g, w, rtol=rtol, atol=atol)
    if bool(close.all()):
        return None
    at = tuple(int(i) for i in (~close).nonzero()[0])
    a, b = g[at].item(), w[at].item()
    digits = next((d for d in (6, 9, 12) if f"{a:.{d}g}" != f"{b:.{d}g}"), 17)   # just enough to look different
    yours, expected = f"{a:.{digits}g}", f"{b:.{digits}g}"
    if not at:                                                              # one number
        return f"yours {yours}, expected {expected}"
    return (f"first difference at [{', '.join(map(str, at))}]: yours {yours}, expected {expected} "
            f"(max |diff| {(g - w).abs().max().item():.3g})")


def diagnose(piece: Piece, case: Case, got: List[Tensor], want: List[Tensor], part: int) -> str:
    """The likely cause: the case's own hint (an edge case says what the reference does there), the named
    mistake the learner's result equals (NaN equal to NaN: a mistake's NaN is part of its signature), or a
    generic clue."""
    if case.hint:
        return case.hint
    for hint, variant in piece.mistakes:
        try:
            with torch.no_grad():
                result = as_parts(piece, variant(*inputs(piece, case, False)))
        except Exception:       # a mistake that cannot even run on these inputs is not the learner's
            continue
        if len(got) == len(result) and all(
                g.shape == r.shape and bool(torch.isclose(g.detach().double(), r.detach().double(), rtol=piece.rtol,
                                                          atol=piece.atol, equal_nan=True).all())
                for g, r in zip(got, result)):
            return hint
    return clue(piece, got[part], want[part], piece.doc(part))


def clue(piece: Piece, got: Tensor, want: Tensor, doc: str) -> str:
    """Generic clues for a result that matches no named mistake: shape, NaN, float32, zeros, a constant factor
    or offset, two axes swapped or one reversed."""
    if got.shape != want.shape:
        said = [f"that is{doc}"] if doc else []
        if got.numel() == want.numel():
            said.append("the right number of elements in the wrong layout: axes transposed or reshaped wrongly?")
        return "; ".join(said) or "check how your result is shaped"
    g, w = got.detach().double(), want.detach().double()
    close = lambda a, b: bool(torch.isclose(a, b, rtol=piece.rtol * 10, atol=piece.atol * 10).all())  # noqa: E731
    if torch.isnan(g).any():
        return "NaN in your result: a division 0/0, or the softmax of a row that is all -inf?"
    if got.dtype != want.dtype and bool(torch.isclose(g, w, rtol=1e-4, atol=1e-6).all()):
        return f"yours is {got.dtype}, expected {want.dtype}: make new tensors with dtype=x.dtype"
    if (g - w).abs().max() <= 1e-3 * w.abs().max():          # within 0.1% of the largest value
        return NEARLY
    if g.numel() <= 1:
        return piece.hint
    if g.abs().sum() == 0:
        return "your result is all zeros"
    if w.abs().sum() > 0:
        c = float((g * w).sum() / (w * w).sum())            # the least-squares factor
        if close(g, c * w):
            return "the sign is flipped" if abs(c + 1) < 1e-6 else \
                f"values off by a constant factor {c:.4g}: a scale missing or extra?"
    offset = (g - w).flatten()[0]
    if close(g, w + offset):
        return f"values off by a constant {float(offset):.4g}: a term missing or extra?"
    for i in range(w.dim()):
        for j in range(i + 1, w.dim()):
            if w.shape[i] == w.shape[j] and close(g, w.transpose(i, j)):
                return f"axes {i} and {j} swapped"
        if w.shape[i] > 1 and close(g, w.flip(i)):
            return f"reversed along axis {i}"
    return piece.hint


def compare_gradients(piece: Piece, label: str, mine: list, theirs: list, want: List[Tensor],
                      got: List[Tensor]) -> None:
    """The gradients of ``sum_i <upstream_i, result part i>`` w.r.t. each input of ``grad_args``, yours against
    the reference's (the parts the reference differentiates)."""
    parts = [i for i, w in enumerate(want) if w.requires_grad]
    if not parts:
        return
    for i in parts:
        if not got[i].requires_grad:
            raise AssertionError(f"{label}: {piece.names()[i]}your result has no gradient: did you use .detach(), "
                                 f".item(), numpy or torch.no_grad()? Autograd must see every step")
    upstream = [randn(i, *want[i].shape).to(want[i].dtype) for i in parts]
    at = [i for i in piece.grad_args if isinstance(mine[i], Tensor) and mine[i].requires_grad]
    expected = torch.autograd.grad([want[i] for i in parts], [mine[i] for i in at], upstream, allow_unused=True)
    try:
        yours = torch.autograd.grad([got[i] for i in parts], [theirs[i] for i in at],
                                    [u.to(got[i].dtype) for i, u in zip(parts, upstream)], allow_unused=True)
    except Exception as e:
        raise AssertionError(f"{label}: the backward pass through your function raised {type(e).__name__}: "
                             f"{one_line(e)}") from e
    got, want = got[parts[0]], want[parts[0]]
    for i, y, e in zip(at, yours, expected):
        e = torch.zeros_like(mine[i]) if e is None else e
        name = piece.arg_names[i]
        if y is None:
            if e.abs().sum() > 0:
                raise AssertionError(f"{label}: gradient w.r.t. {name}: your result does not depend on {name} "
                                     f"through autograd (.detach(), numpy or a copy made without it?)")
            continue
        problem = difference(y, e, piece.rtol, piece.atol)
        if not problem:
            continue
        if got.dtype != want.dtype:
            why = f"yours is {got.dtype}, expected {want.dtype}: make new tensors with dtype=x.dtype"
        elif torch.isnan(y).any():
            why = ("NaN in the gradient: a NaN computed and then masked away (e.g. the softmax of a row of -inf) "
                   "still poisons the gradient")
        elif (y - e).abs().max() <= 1e-3 * e.abs().max():
            why = f"the values match and the gradient nearly does: {NEARLY}"
        else:
            why = ("the values match but the gradient does not: is part of the computation cut from autograd "
                   "(.detach(), .data, an in-place change of an input)?")
        raise AssertionError(f"{label}: gradient w.r.t. {name}: {problem}: {why}")
