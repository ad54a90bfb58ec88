"""``python -m dinotracker.benchmark benchmark=<name>``: fit + evaluate every video of a benchmark.

The job itself is :mod:`dinotracker.jobs.benchmark`; this module only names the entry point.
"""

from dinotracker.jobs.benchmark import main

if __name__ == "__main__":
    main()
