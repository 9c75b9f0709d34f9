"""``python -m jupyter_cc`` runs the ``jupyter-cc`` command."""

from __future__ import annotations

import sys

from jupyter_cc.cli import main

sys.exit(main())
