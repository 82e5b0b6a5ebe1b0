"""Notebook 09's study: three approaches (scratch layers, PyTorch's layers, the official weights fine-tuned) and
four initialisation schemes, trained by the engine on the same data, seeds and budget (``python -m detr_nb
compare``): :mod:`.compare` runs them, :mod:`.report` reads them back (table, figures)."""
