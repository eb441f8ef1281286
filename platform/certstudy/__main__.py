"""``python -m certstudy`` is the ``certstudy`` command."""

import sys

from certstudy.cli import main

sys.exit(main())
