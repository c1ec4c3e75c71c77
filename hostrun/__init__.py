"""hostrun: boot a kernel + initrd in a micro-VM whose /nix/store is a virtiofs share.

Importing this package is cheap and has no side effects (the pytest plugin relies on it).
"""

from __future__ import annotations
