"""``python -m dinotracker.track run=<run folder> queries=<file> out=<file.npz>``: track with a fitted model.

The job itself is :mod:`dinotracker.jobs.track`; this module only names the entry point.
"""

import sys

from dinotracker.jobs.track import main

if __name__ == "__main__":
    sys.exit(main())
