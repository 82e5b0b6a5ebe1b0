"""Looking at data: image grids with boxes and class names, and dataset statistics (notebook 06, data)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict

import numpy as np



def dataset_stats(dataset) -> Dict[str, object]:
    """Counts from the annotations alone (no image is read); crowd annotations are left out.

    Returns ``objects_per_image`` (array), ``box_w`` / ``box_h`` (pixels), ``box_rel_size``
    (sqrt(box area / image area)), ``class_counts`` (name -> count), ``num_images``, ``num_objects``.
    """
    coco = dataset.coco
    names = getattr(dataset, "categories", {c: coco.cats[c]["name"] for c in coco.cats})
    per_image, bw, bh, rel, classes = [], [], [], [], Counter()
    for image_id in dataset.ids:
        img = coco.imgs[image_id]
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        per_image.append(len(anns))
        for a in anns:
            w, h = float(a["bbox"][2]), float(a["bbox"][3])
            bw.append(w)
            bh.append(h)
            if img.get("width") and img.get("height"):
                rel.append(math.sqrt(max(w * h, 0.0) / (img["width"] * img["height"])))
            classes[names.get(a["category_id"], str(a["category_id"]))] += 1
    return {"num_images": len(per_image), "num_objects": int(sum(per_image)),
            "objects_per_image": np.array(per_image), "box_w": np.array(bw), "box_h": np.array(bh),
            "box_rel_size": np.array(rel), "class_counts": dict(sorted(classes.items(), key=lambda kv: -kv[1]))}
