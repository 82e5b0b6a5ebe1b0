"""The checks of the notebooks' "Your turn" cells: the learner writes a key piece of DETR, a check compares it
with the package's own function.

Each ``check_<piece>(fn)`` runs ``fn`` and the reference on several inputs (edge cases included), compares the
values and, where the piece is differentiable, the gradients. It prints one line starting with "✓" and returns
True when they match; prints "… not written yet" and returns False while ``fn`` still raises
``NotImplementedError`` (the skeleton), so that "Run all" goes on; otherwise raises an ``AssertionError`` of
one line naming the case, the first differing element and the likely mistake (how: :mod:`.base`).
``check_<piece>.reference`` is the function it compares with.

By notebook:

* 01 (CNN backbone): :func:`check_conv2d`, :func:`check_frozen_batch_norm` (:mod:`.backbone`)
* 02 (positional encoding): :func:`check_sine_encoding` (:mod:`.positions`)
* 03 (attention, encoder): :func:`check_attention`, :func:`check_heads`, :func:`check_layer_norm`,
  :func:`check_post_norm_block` (:mod:`.attention`)
* 04 (DETR model): :func:`check_decoder_layer` (:mod:`.attention`)
* 05 (matching & loss): :func:`check_giou`, :func:`check_matching_cost`, :func:`check_set_loss` (:mod:`.matching`),
  :func:`check_train_step` (:mod:`.training`)
* 06 (data): :func:`check_hflip` (:mod:`.data`)
* 08 (evaluation): :func:`check_average_precision` (:mod:`.evaluation`)
"""
from __future__ import annotations

from .attention import check_attention, check_decoder_layer, check_heads, check_layer_norm, check_post_norm_block
from .backbone import check_conv2d, check_frozen_batch_norm
from .data import check_hflip
from .evaluation import check_average_precision
from .matching import check_giou, check_matching_cost, check_set_loss
from .positions import check_sine_encoding
from .training import check_train_step

__all__ = ["check_attention", "check_average_precision", "check_conv2d", "check_decoder_layer",
           "check_frozen_batch_norm", "check_giou", "check_heads", "check_hflip", "check_layer_norm",
           "check_matching_cost", "check_post_norm_block", "check_set_loss", "check_sine_encoding",
           "check_train_step"]
