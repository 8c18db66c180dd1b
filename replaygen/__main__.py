"""``python -m replaygen``: the same as the ``replaygen`` command."""

import sys

from .cli import main

sys.exit(main())
