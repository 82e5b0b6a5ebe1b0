"""detr_nb: DETR (Carion et al., 2020) built from scratch in PyTorch, taught in notebooks.

Public names are re-exported here as their modules land; see README.md.
"""

__version__ = "0.1.0"

# Where the notebooks' Colab badges and install cells point. One constant, used everywhere.
REPO_URL = "https://github.com/detr-nb/detr_nb"
REPO_BRANCH = "main"
