"""``python -m scaleml.train``: the ``scaleml-train`` command."""

import sys

from .cli import main

sys.exit(main())
