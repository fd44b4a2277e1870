"""`python -m ztplan` runs the CLI."""

from ztplan.cli import main

main()
