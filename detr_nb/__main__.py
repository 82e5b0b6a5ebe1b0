"""``python -m detr_nb train|evaluate|predict|compare|export`` (see detr_nb/cli/__init__.py)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
