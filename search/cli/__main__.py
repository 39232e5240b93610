"""``python -m memekit.search.cli`` (and ``torchrun -m memekit.search.cli``): the memekit command line."""

import sys

from memekit.search.cli import main

sys.exit(main())
