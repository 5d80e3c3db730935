"""``python -m flows`` runs the segflow CLI."""

from flows.cli import main

main()
