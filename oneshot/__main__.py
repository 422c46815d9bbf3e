"""``python -m oneshot ...`` (and ``torchrun -m oneshot train ...``): the oneshot command."""

import sys

from .cli import main

sys.exit(main())
