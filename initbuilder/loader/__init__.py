"""The dynamic loader's view of a tree: ELF files, ld.so's search rules, closures, and
putting programs with their closures into an Image (docs/closure.md)."""
