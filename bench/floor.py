"""The floor: the least a virtiofs micro-VM boot can do, for bench/boot.py to compare with.

An initrd whose /init is a busybox sh script: mount proc, sys, dev, and /tmp, /run and
/dev/pts as the guest init does (the same mounts); insmod the kernel modules in the
load-list order; mount the virtiofs tag on /nix/store; run the action
(tvix.exec / tvix.run / tvix.find / tvix.shell) and print the guest protocol's status
record; power off. Built with initbuilder's Image, modules and cpio writer, so the
modules are exactly the ones hostrun's own initrd carries.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from hostrun import hostcpu
from hostrun.action import Action, kernel_cmdline
from hostrun.placement import PAGE
from hostrun.virtiofs import choose_daemon
from hostrun.vmm import BootConfig, Qemu
from initbuilder.cpio import write_initrd
from initbuilder.image import Image
from initbuilder.kernels.modules import add_modules
from initbuilder.sources import add_skeleton

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t tmpfs -o nosuid,nodev,mode=1777 tmp /tmp
/bin/busybox mount -t tmpfs -o nosuid,nodev,mode=0755 run /run
/bin/busybox mkdir -p /dev/pts
/bin/busybox mount -t devpts -o nosuid,noexec,mode=0620,ptmxmode=0666 devpts /dev/pts
export PATH=/bin
cmdline=$(busybox cat /proc/cmdline)
value() {
  echo " $cmdline " | busybox sed -n -e "s/.* $1=\"\([^\"]*\)\" .*/\1/p" \
    -e "t" -e "s/.* $1=\([^ ]*\) .*/\1/p"
}
has() { case " $cmdline " in *" $1 "*) return 0;; esac; return 1; }
if [ -e /etc/initkit/modules ]; then  # none for a kernel with everything built in
  while read -r module; do busybox insmod "$module"; done < /etc/initkit/modules
fi
busybox mkdir -p /nix/store
tag=$(value tvix.tag); tag=${tag:-tvix}
busybox mount -t virtiofs -o ro "$tag" /nix/store
nonce=$(value initkit.nonce); nonce=${nonce:-none}
if has tvix.find; then busybox find /nix/store
elif has tvix.shell; then busybox setsid -c busybox sh
elif [ -n "$(value tvix.exec)" ]; then $(value tvix.exec)
elif [ -n "$(value tvix.run)" ]; then busybox sh -c "$(value tvix.run)"
else echo "floor init: no action"; false
fi
status=$?
if [ $status -gt 128 ]; then kind=signal; status=$((status - 128)); else kind=exit; fi
printf '\ninitkit-status:%s:%s=%d\n' "$nonce" "$kind" "$status"
busybox poweroff -f
"""


def build_floor_initrd(out: Path, *, kernel: Path | None = None,
                       modules_dir: Path | None = None, init_script: str = INIT_SCRIPT) -> Path:
    """Write the floor initrd (uncompressed newc) to ``out`` and return it; a bench
    that needs to see inside the floor's boot passes its own variant of INIT_SCRIPT."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise FileNotFoundError("busybox is needed for the floor initrd (apt-get install "
                                "busybox-static)")
    image = Image()
    add_skeleton(image)
    image.add_file("bin/busybox", host=busybox, mode=0o755)
    image.add_symlink("bin/sh", "busybox")
    image.add_file("init", data=init_script.encode(), mode=0o755)
    add_modules(image, kernel=kernel, modules_dir=modules_dir)
    write_initrd(image, out, compression="none", pad_to=PAGE)  # as hostrun's own
    return out


def start_floor(vmlinux: Path, initrd: Path, store: Path, program: str, accel: str,
                sock: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    """The floor's daemon, started on ``sock`` (the one hostrun would pick, given its
    listening socket as hostrun does), and the QEMU argv that boots ``program`` on it."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    listener.listen(1)
    fs = choose_daemon("auto", store)
    daemon = subprocess.Popen(fs.argv(sock, listener.fileno()), pass_fds=(listener.fileno(),),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener.close()
    qemu = Qemu(tsc_khz=hostcpu.host_tsc_khz() if accel == "tcg" else None)
    cmdline = kernel_cmdline(defaults=qemu.cmdline_defaults(accel), nonce="0" * 16,
                             verbose=False, action=Action("exec", argv=(program,)))
    argv = qemu.argv(BootConfig(kernel=vmlinux, initrd=initrd, cmdline=cmdline,
                                fs_socket=sock, accel=accel))
    return daemon, argv
