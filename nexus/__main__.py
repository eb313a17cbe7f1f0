"""``python -m nexus <command>``: the ``nexus`` command, where its script is not on PATH."""

import sys

from nexus_sdk.cli import main

sys.exit(main())
