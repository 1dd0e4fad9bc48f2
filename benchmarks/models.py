"""Benchmark the three model paths: training throughput, LSTM cost per labelled slice, series inference.

Runs ``ichlab bench`` with the settings used for docs/BENCHMARKS.md; extra arguments are
passed on (for example ``--device cuda`` or ``--sizes 224``):

    .venv/bin/python benchmarks/models.py [--threads 2] [...]
"""

from __future__ import annotations

import logging
import sys

from ichlab.cli import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(["bench", "--sizes", "128", "224", "--batch-size", "16", "--steps", "3", *sys.argv[1:]]))
