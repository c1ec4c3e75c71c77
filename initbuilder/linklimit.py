"""How many symlinks one path lookup follows before giving up.

Linux's limit (MAXSYMLINKS, 40, in fs/namei.c). The Image follows its own links with it
as the kernel's unpacker would, and the trees read for the image (a --root, the host)
are walked with it, so a loop fails the same way everywhere.
"""

from __future__ import annotations

MAX_LINK_HOPS = 40
