"""``python -m memekit``: the memekit command line.

pyproject.toml maps this folder to the top-level package ``memekit`` (``package-dir``), so an
installed memekit holds ``memekit/__main__.py`` next to ``memekit/space``, ``memekit/analysis`` and
``memekit/search``; ``memekit`` stays a namespace package (there is no ``memekit/__init__.py``).
"""

import sys

from memekit.search.cli import main

sys.exit(main())
