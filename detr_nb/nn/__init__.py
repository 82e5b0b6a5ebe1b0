"""The building blocks, each written twice (math on tensors, PyTorch's fused ops): :mod:`.layers`,
:mod:`.attention`; and the box arithmetic DETR needs, :mod:`.box_ops`. Notebooks 01, 03, 05."""
