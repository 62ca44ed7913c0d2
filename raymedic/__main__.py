"""``python -m raymedic``: the ``raymedic`` command line, for environments without the script installed."""

import sys

from raymedic.app.cli import main

sys.exit(main())
