"""Command line: ``python -m vscene_engine <command> ...`` (see ``--help``). Implementation in :mod:`vscene_engine.tools.cli`."""
import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
