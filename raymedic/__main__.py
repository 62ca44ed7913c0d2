import sys

from raymedic.cli import main

sys.exit(main())
