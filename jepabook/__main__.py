"""`python -m jepabook ...`: see `jepabook.cli`."""

import sys

from jepabook.cli import main

if __name__ == "__main__":
    sys.exit(main())
