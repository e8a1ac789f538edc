"""``python -m qdriver``: the CLI."""
from .cli import main

main()
