"""Store views: what the virtiofs daemon serves as the guest's /nix/store.

A whole directory (``--store DIR``, no view at all), or exactly a closure (``--closure``):
its paths taken from a host store or unpacked from a Nix binary cache (``--substituter``).
What is served is decided here, apart from which daemon serves it (hostrun/virtiofs.py).

- ``nixbase32``  Nix's base-32 and the hashes a narinfo writes
- ``narinfo``    one ``<hash>.narinfo`` file, parsed and checked
- ``nar``        the NAR format, read as a stream and unpacked (hostile input is refused)
- ``compressed`` a cache's compressed NAR file as a stream of NAR bytes
- ``substituter`` a ``file://`` binary cache → a verified, content-addressed cache entry
- ``refscan``    the reference scanner (Nix's rule: hashes of known store paths in the bytes)
- ``closure``    which paths the guest gets, and where each one comes from
- ``view``       the directory the daemon serves (links, or what the daemon mounts there)
- ``mounts``     the view made in the daemon's private mount namespace: tmpfs + binds
"""
