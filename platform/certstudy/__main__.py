"""``python -m certstudy`` is the ``certstudy`` command."""

from certstudy.cli import console_main

console_main()
