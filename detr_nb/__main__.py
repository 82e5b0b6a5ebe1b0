"""``python -m detr_nb train | evaluate | predict | export`` (see detr_nb/cli.py)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
