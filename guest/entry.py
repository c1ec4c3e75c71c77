"""What /init runs: the kernel's ``#!`` line hands the interpreter this module's bytecode as
its script, so the boot compiles no source (initbuilder/runtime.py, docs/guest.md)."""

from __future__ import annotations

import time

if __name__ == "__main__":
    started = time.clock_gettime(time.CLOCK_BOOTTIME)  # before the guest's imports
    from guest.__main__ import main

    main(started)
