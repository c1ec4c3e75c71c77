"""``python -m hostrun``: the same as the ``hostrun`` command."""

from __future__ import annotations

from hostrun.program import main

main()
