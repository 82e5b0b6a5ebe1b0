"""The helpers behind the notebooks' exercises and widgets: the toy inputs, the tensors a figure shows, the
checks of a learner's own code; ``detr_nb.figures`` draws. Each notebook cell that explores something calls
one function here, so what a reader sees is tested (tests/test_explain.py) without a browser.

By notebook: :mod:`.images` (a photograph as a tensor), 01 :mod:`.cnn`, 02 :mod:`.positions`, 03 and 08
:mod:`.attention_viz`, 04 :mod:`.detections`, 04 and 10 :mod:`.architecture` (the tensors of Figure 2 and of
two-stage query selection); 05-07 :mod:`.lessons` and :mod:`.matching`; 06 :mod:`.data_viz`;
10 :mod:`.convergence`. ``from detr_nb import teach`` gives the names of the first five (``teach.im2col_loops``).
:mod:`.nbtools` keeps the notebooks' ``.ipynb`` in step with their ``.py`` sources. :mod:`.checks` holds the checks
of the "Your turn" cells (``from detr_nb.teach.checks import check_attention``), notebooks 01-08.
"""
from .images import (image_to_tensor, sample_image)
from .cnn import grouped_parameter_table, im2col_loops, stage_features
from .positions import normalized_coordinates, position_similarity, sine_encoding_1d
from .attention_viz import (attention_maps, attention_weights, decoder_attention_figure, decoder_attention_of,
                            encoder_attention_at, encoder_attention_figure, positional_toy_attention,
                            query_predictions, to_torch_mha)
from .detections import COCO_CLASSES, naive_parameter_counts

__all__ = [
    "COCO_CLASSES", "attention_maps", "attention_weights", "decoder_attention_figure", "decoder_attention_of",
    "encoder_attention_at", "encoder_attention_figure",
    "grouped_parameter_table", "im2col_loops", "image_to_tensor", "naive_parameter_counts",
    "normalized_coordinates", "position_similarity", "positional_toy_attention", "query_predictions",
    "sample_image", "sine_encoding_1d", "stage_features", "to_torch_mha"
]
