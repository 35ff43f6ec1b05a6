"""`python -m vramplan.cli`, as the `vramplan` script."""

from __future__ import annotations

import sys

from vramplan.cli import main

sys.exit(main())
