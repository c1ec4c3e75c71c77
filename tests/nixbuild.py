"""Real Nix outputs for the tests: derivations over host tools (/bin/sh, cp, gcc), built
offline by Debian's nix-bin in single-user mode, so the Nix database knows them."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from realparts import missing_part

HELLO_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    puts("Hello from the closure!");
    if (argc > 2 && strcmp(argv[1], "exit") == 0) return atoi(argv[2]);
    return 0;
}
"""

# Prints the file named by argv[1]: a program that reads a store path outside its closure
# (the path reaches it at run time, so Nix's scanner cannot see it as a reference).
CATFILE_C = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    char buf[4096];
    size_t n;
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
    return 0;
}
"""

EXPRESSION = r"""
{ ld, libc, hello_c, catfile_c, tag }:
let
  base = { system = "x86_64-linux"; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; };
  drv = name: script: builtins.derivation (base // { inherit name tag; args = [ "-c" script ]; });
  glibc = drv "initkit-test-glibc" "mkdir -p $out/lib && cp -L ${ld} ${libc} $out/lib/";
  linked = name: src: drv name ''
    mkdir -p $out/bin
    gcc -O2 -o $out/bin/${name} ${builtins.toFile "${name}.c" src} \
      -Wl,--dynamic-linker=${glibc}/lib/ld-linux-x86-64.so.2 -Wl,-rpath,${glibc}/lib
  '';
in {
  inherit glibc;
  hello = linked "hello" hello_c;
  catfile = linked "catfile" catfile_c;
  secret = drv "initkit-test-secret" "echo the secret > $out";
}
"""


@dataclass(frozen=True)
class NixOutputs:
    """Store paths built by Nix (the Nix database knows them and their references)."""

    glibc: str
    hello: str  # bin/hello: dynamically linked against glibc, its own store path
    catfile: str  # bin/catfile FILE: prints FILE
    secret: str  # a regular file no other output refers to


def host_library(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True,
                         text=True, check=True).stdout.strip()
    if not os.path.isabs(out):
        for base in ("/lib/x86_64-linux-gnu", "/lib64", "/usr/lib/x86_64-linux-gnu"):
            if os.path.exists(os.path.join(base, name)):
                return os.path.realpath(os.path.join(base, name))
    return os.path.realpath(out)


def nix_build(workdir: Path, tag: str = "1") -> NixOutputs:
    """Build the test outputs with nix-build (skips where Nix or gcc is missing)."""
    for tool in ("nix-build", "nix-store", "gcc"):
        if shutil.which(tool) is None:
            missing_part(f"{tool} is not installed (apt-get install nix-bin gcc)")
    if os.geteuid() != 0 and not os.access("/nix/store", os.W_OK):
        missing_part("single-user Nix needs a writable /nix/store (run as root)")
    expr = workdir / "outputs.nix"
    expr.write_text(EXPRESSION)
    args = {"ld": host_library("ld-linux-x86-64.so.2"), "libc": host_library("libc.so.6"),
            "hello_c": HELLO_C, "catfile_c": CATFILE_C, "tag": tag}
    # Builders use host tools, so no build sandbox; root builds for itself (single-user
    # Nix, no nixbld group needed) whatever the release's nix.conf says.
    argv = ["nix-build", "--no-out-link", "--option", "sandbox", "false",
            "--option", "build-users-group", "", str(expr)]
    for key, value in args.items():
        argv += ["--argstr", key, value]
    paths = {}
    for attr in ("glibc", "hello", "catfile", "secret"):
        proc = subprocess.run([*argv, "-A", attr], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "NIX_REMOTE": ""})
        if proc.returncode != 0:
            missing_part(f"nix-build failed here: {proc.stderr.strip()[-500:]}")
        paths[attr] = proc.stdout.strip()
    return NixOutputs(**paths)


def nix_copy(paths: list[str], cache: Path, compression: str = "xz") -> Path:
    """``nix copy --to file://CACHE`` (a binary cache directory) of ``paths``."""
    url = f"file://{cache}?compression={compression}"
    subprocess.run(["nix", "--extra-experimental-features", "nix-command", "copy", "--to",
                    url, *paths], check=True, capture_output=True, timeout=600,
                   env={**os.environ, "NIX_REMOTE": ""})
    return cache
