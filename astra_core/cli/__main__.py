"""``python -m astra_core.cli``: the same as the ``astra`` command."""

from __future__ import annotations

import sys

from astra_core.cli import main

sys.exit(main())
