"""``python -m hiclaw`` is the same as the ``hiclaw`` command."""
import sys

from hiclaw.cli import main

if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
