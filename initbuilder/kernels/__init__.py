"""Kernels: image formats, fetching Debian's and building initkit's own, and the
modules an initrd carries for one (docs/kernel.md)."""
