"""A trained model at work: COCO evaluation (:mod:`.evaluate`, pycocotools), detections on photos, folders and
URLs (:mod:`.predict`), ONNX export and onnxruntime (:mod:`.export`). Notebooks 08 and 11; ``python -m detr_nb
evaluate | predict | export``."""
