"""``python -m lmforge`` runs the ``lmforge`` command."""

import sys

from lmforge.cli import main

sys.exit(main())
