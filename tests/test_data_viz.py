"""Looking at data (detr_nb.teach.data_viz, notebook 06): a sample grid, a padded batch, statistics, and
augmentations that move the boxes with the pixels, reproducibly."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from detr_nb.data import SYNTHETIC_CLASSES as CLASSES  # noqa: E402
from detr_nb.data import RandomHorizontalFlip, RandomResize, RandomSizeCrop, build_dataset, collate_fn  # noqa: E402
from detr_nb.teach.data_viz import (augment, augmentations, dataset_stats, plot_augmentations,  # noqa: E402
                                    plot_dataset_stats, show_batch, show_samples)


@pytest.fixture(scope="module")
def raw_synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return build_dataset("synthetic", "train", preset="none", root=str(root), num_train=6, num_val=2, workers=1,
                         progress=False)


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


def test_augment_is_seeded_and_moves_boxes(raw_synthetic):
    ds = raw_synthetic
    image, target = ds.get_raw(0)
    w, h = image.size
    b = target["boxes"]
    _, flipped = augment(ds, 0, RandomHorizontalFlip(p=1.0))
    torch.testing.assert_close(flipped["boxes"], torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1))
    im2, resized = augment(ds, 0, RandomResize([2 * min(w, h)]))
    sx, sy = im2.size[0] / w, im2.size[1] / h
    torch.testing.assert_close(resized["boxes"], b * torch.tensor([sx, sy, sx, sy]))
    state = random.getstate()
    a1, a2 = (augment(ds, 0, RandomSizeCrop(20, 60), seed=5) for _ in range(2))
    assert random.getstate() == state                                   # the caller's random stream is untouched
    assert a1[0].size == a2[0].size and torch.equal(a1[1]["boxes"], a2[1]["boxes"])
    assert torch.equal(a1[1]["labels"], a2[1]["labels"]) and len(a1[1]["labels"]) == len(a1[1]["boxes"])


def test_plot_augmentations_draws_every_box(raw_synthetic):
    ds = raw_synthetic
    panels = augmentations(ds, 0, {"flip": RandomHorizontalFlip(1.0), "crop": RandomSizeCrop(20, 40)}, seed=2)
    fig = plot_augmentations(panels, names=ds.categories)
    n_raw = len(ds.get_raw(0)[1]["boxes"])
    n_crop = len(augment(ds, 0, RandomSizeCrop(20, 40), seed=2)[1]["boxes"])
    assert [len(ax.patches) for ax in fig.axes] == [n_raw, n_raw, n_crop] and "crop" in fig.axes[2].get_title()
