"""``python -m bes`` is the ``bes`` command."""

from bes.cli import main

main()
