"""initkit's neutral core, imported by every package: the one error type and its exit
codes, starting processes, cache paths, atomic writes and file identity, the CLI
framework. Nothing here knows about VMs, ELF or initrds."""
