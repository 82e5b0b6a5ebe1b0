"""Every picture the package draws, from tensors and records it is given (matplotlib is imported here only,
and only when a figure is drawn): ``from detr_nb import figures``.

:mod:`.boxes` (an image with boxes, shared by all), 01 :mod:`.cnn`, 02 :mod:`.positions`, 03 and 08
:mod:`.attention`, 04 and 08 :mod:`.detections`, 04 and 10 :mod:`.architecture` (Figure 2, query selection),
05 :mod:`.matching`, 06 :mod:`.data`, 07 :mod:`.training`, 09 :mod:`.study`, 10 :mod:`.convergence`. A run's
figures (``predictions.png``, ``loss.png``) come from :mod:`.detections` and :mod:`.training`.
"""
from .boxes import class_color, draw_boxes, to_display_image
from .cnn import plot_feature_maps, plot_im2col, plot_parameter_table
from .positions import plot_pixel_encoding
from .attention import (plot_attention_heads, plot_attention_query, plot_decoder_attention, plot_encoder_attention,
                        show_attention_mask)
from .detections import draw_predictions, plot_detections, save_annotated
from .matching import plot_cost_terms, plot_matching, plot_matching_graph
from .architecture import plot_detr_architecture, plot_query_selection
from .data import plot_augmentations, plot_dataset_stats, show_batch, show_samples
from .training import LiveLossPlot, loss_figure, plot_grad_std, plot_histograms, plot_losses, plot_weight_sum

__all__ = [
    "LiveLossPlot", "class_color", "draw_boxes", "draw_predictions", "loss_figure", "plot_attention_heads",
    "plot_attention_query", "plot_augmentations", "plot_cost_terms", "plot_dataset_stats", "plot_decoder_attention",
    "plot_detections", "plot_detr_architecture", "plot_encoder_attention", "plot_feature_maps", "plot_grad_std",
    "plot_histograms", "plot_im2col", "plot_losses", "plot_matching", "plot_matching_graph", "plot_parameter_table",
    "plot_pixel_encoding", "plot_query_selection", "plot_weight_sum", "save_annotated", "show_attention_mask",
    "show_batch", "show_samples", "to_display_image",
]
