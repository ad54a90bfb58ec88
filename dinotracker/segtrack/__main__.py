"""``python -m dinotracker.segtrack video=<frames|file> mask=<png> out=<dir> [features=run:<folder>]``.

The job itself is :mod:`dinotracker.jobs.segtrack`; this module only names the entry point (the one
import from the ``segtrack`` library layer up to ``jobs`` that the import contract allows).
"""

import sys

from dinotracker.jobs.segtrack import main

if __name__ == "__main__":
    sys.exit(main())
