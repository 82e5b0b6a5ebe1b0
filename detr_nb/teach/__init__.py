"""The helpers behind the notebooks' figures and widgets: each notebook cell that draws or explores something
calls one function here, so what a reader sees is tested (tests/test_explain.py) without a browser.

By notebook: :mod:`.images` (a photograph as a tensor), 01 :mod:`.cnn`, 02 :mod:`.positions`, 03 and 08
:mod:`.attention_viz`, 04 :mod:`.detections`; 05-07 :mod:`.lessons` and :mod:`.matching`; 06 :mod:`.data_viz`;
10 :mod:`.convergence`. ``from detr_nb import teach`` gives the names of the first five (``teach.plot_im2col``).
:mod:`.nbtools` keeps the notebooks' ``.ipynb`` in step with their ``.py`` sources.
"""
from .images import (image_to_tensor, sample_image)
from .cnn import (grouped_parameter_table, im2col_loops, plot_feature_maps, plot_im2col,
                  plot_parameter_table, stage_features)
from .positions import (normalized_coordinates, plot_pixel_encoding, position_similarity, sine_encoding_1d)
from .attention_viz import (attention_maps, attention_weights, decoder_attention_of, encoder_attention_at,
                            plot_attention_heads, plot_attention_query, plot_decoder_attention,
                            plot_encoder_attention, positional_toy_attention, query_predictions, to_torch_mha)
from .detections import (COCO_CLASSES, naive_parameter_counts, plot_detections)

__all__ = [
    "COCO_CLASSES", "attention_maps", "attention_weights", "decoder_attention_of", "encoder_attention_at",
    "grouped_parameter_table", "im2col_loops", "image_to_tensor", "naive_parameter_counts",
    "normalized_coordinates", "plot_attention_heads", "plot_attention_query", "plot_decoder_attention",
    "plot_detections", "plot_encoder_attention", "plot_feature_maps", "plot_im2col", "plot_parameter_table",
    "plot_pixel_encoding", "position_similarity", "positional_toy_attention", "query_predictions", "sample_image",
    "sine_encoding_1d", "stage_features", "to_torch_mha"
]
