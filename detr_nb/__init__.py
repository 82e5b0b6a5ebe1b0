"""detr_nb (being rebuilt)."""
__version__ = "0.1.0"
REPO_URL = "https://github.com/detr-nb/detr_nb"
REPO_BRANCH = "main"
