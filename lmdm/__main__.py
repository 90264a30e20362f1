"""``python -m lmdm``: the command line (``lmdm.cli.main``)."""
import sys

from lmdm.cli import main

sys.exit(main())
