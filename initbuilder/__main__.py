"""`python -m initbuilder` is the `initbuilder` command."""

from __future__ import annotations

from initbuilder.program import main

main()
