"""``python -m dinotracker.preprocess +video=...``: compute (or reuse) the preprocessing cache.

The job itself is :mod:`dinotracker.jobs.preprocess`; this module only names the entry point.
"""

from dinotracker.jobs.preprocess import main

if __name__ == "__main__":
    main()
