"""`python -m attrx ...` is the `attrx` command."""

from attrx.cli import main

main()
