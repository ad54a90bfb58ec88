"""``make demo`` / ``python -m dinotracker.demo``: fit on the built-in synthetic video, offline.

The job itself is :mod:`dinotracker.jobs.demo`; this module only names the entry point.
"""

from dinotracker.jobs.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
