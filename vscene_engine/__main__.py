"""Command line: ``python -m vscene_engine <command> ...`` (see ``--help``). Implementation in :mod:`vscene_engine.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
