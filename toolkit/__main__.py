"""``python -m toolkit``: the ``toolkit`` command, for where its script is not on PATH."""

import sys

from toolkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
