"""``python -m scaleml.bench``: the ``scaleml-bench`` command line."""

import sys

from scaleml.bench import main

sys.exit(main())
