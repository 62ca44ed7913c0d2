import sys

from raymedic.app.cli import main

sys.exit(main())
