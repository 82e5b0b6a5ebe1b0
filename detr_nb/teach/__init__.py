"""What only the notebooks use: the "Your turn" checks, the figures and widgets of each lesson, notebook 09's
study and the paper's analyses. Nothing outside ``teach`` imports it.

By notebook: 01 :mod:`.first_minute` (the shipped detector), :mod:`.cnn`; 01 and 04 :mod:`.params`; 02 :mod:`.positions`; 03 and 08 :mod:`.attention`;
04, 08 and 10 :mod:`.architecture`; 05 :mod:`.matching`, :mod:`.overfit`; 06 :mod:`.data_viz`; 07
:mod:`.training`, :mod:`.diagnostics`; 08 :mod:`.average_precision`, :mod:`.analysis`; 09 :mod:`.study`
(``python -m detr_nb.teach.study``); 10 :mod:`.convergence`; 11 :mod:`.uploads`. Shared: :mod:`.paths` (where
files go, Google Drive), :mod:`.images` (a photograph without internet), :mod:`.checks` (notebooks 01-08),
:mod:`.nbtools` (``python -m detr_nb.teach.nbtools sync``: the ``.ipynb`` from the ``.py`` sources; ``outputs``:
their kept outputs).
"""
