"""`python -m initbuilder` is the `initbuilder` command."""

from __future__ import annotations

from initbuilder.cli import main

main()
