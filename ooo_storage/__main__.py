"""``python -m ooo_storage``: the ``ooo-storage`` command line."""

import sys

from .cli import main

sys.exit(main())
