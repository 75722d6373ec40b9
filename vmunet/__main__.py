"""``python -m vmunet`` behaves exactly like the ``vmunet`` console script."""

import sys

from vmunet.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
