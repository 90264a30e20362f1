import sys

from lmdm.cli import main

sys.exit(main())
