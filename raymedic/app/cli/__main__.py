"""``python -m raymedic.app.cli``: the same command line as ``raymedic`` (and ``python -m raymedic``)."""

import sys

from raymedic.app.cli import main

sys.exit(main())
