"""``python -m rs_deeplab.sample``: write a synthetic sample dataset (see :mod:`rs_deeplab.sample.cli`)."""

import sys

from rs_deeplab.sample.cli import main

if __name__ == "__main__":
    sys.exit(main(None))
