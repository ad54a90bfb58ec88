"""``python -m dinotracker.fit +video=...``: preprocess (cached) -> train -> track -> evaluate.

The job itself is :mod:`dinotracker.jobs.fit`; this module only names the entry point (also the
``dinotracker-fit`` console script).
"""

from dinotracker.jobs.fit import main

if __name__ == "__main__":
    main()
