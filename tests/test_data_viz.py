"""Figures of the data: sample grid, a padded batch, statistics (notebook 06, data)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from detr_nb.data import build_dataset, collate_fn  # noqa: E402
from detr_nb.figures.data import plot_dataset_stats, show_batch, show_samples  # noqa: E402
from detr_nb.teach.data_viz import dataset_stats  # noqa: E402
from detr_nb.data.synthetic import CLASSES  # noqa: E402


def test_figures(tmp_path):
    ds = build_dataset("synthetic", "train", "cpu", root=str(tmp_path / "s"), num_train=8, num_val=2,
                       image_size=(48, 64), workers=1, progress=False)
    fig = show_samples(ds, n=4, ncols=2)
    assert len(fig.axes) == 4
    fig.savefig(tmp_path / "grid.png")
    fig = show_samples(ds, indices=[0, 1], raw=True)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts and all(t in CLASSES for t in texts)
    images, mask, targets = collate_fn([ds[i] for i in range(3)])
    show_batch(images, mask, targets, names=ds.categories).savefig(tmp_path / "batch.png")
    s = dataset_stats(ds)
    assert s["num_images"] == 8 and s["num_objects"] == int(np.sum(s["objects_per_image"]))
    assert sum(s["class_counts"].values()) == s["num_objects"] and set(s["class_counts"]) <= set(CLASSES)
    assert (s["box_rel_size"] > 0).all() and (s["box_rel_size"] <= 1).all()
    fig = plot_dataset_stats(dataset_stats(ds), title="synthetic")
    fig.savefig(tmp_path / "stats.png")
    assert len(fig.axes) == 4
