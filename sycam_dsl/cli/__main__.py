"""``python -m sycam_dsl.cli``: the same as the ``sycam-dsl`` command."""

import sys

from .main import main

sys.exit(main())
