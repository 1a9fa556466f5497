#!/bin/busybox sh
# The initramfs /init of `cargo xtask vm-test`: loads the modules that
# mounting the machine's root over 9p needs, mounts it read-only with tmpfs
# where programs write, mounts the writable results share, and switches to
# the machine's root to run guest.sh (vmtest.guest= on the command line).
bb=/bin/busybox

fail() {
    echo "vm-test init: $*"
    echo b >/proc/sysrq-trigger
}

arg() {
    $bb sed -n "s/.* vmtest\.$1=\([^ ]*\).*/\1/p" /proc/cmdline
}

$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
for module in /modules/*; do
    $bb insmod "$module" || fail "insmod $module"
done
out=$(arg out)
guest=$(arg guest)
p9="trans=virtio,version=9p2000.L,msize=512000"
$bb mount -t 9p -o "$p9,ro,cache=loose" root /newroot || fail "mounting the machine's root"
# Writable scratch space, except over the directory the workspace is in.
for dir in tmp run var/tmp; do
    case "$out" in
    /$dir/*) echo "vm-test init: /$dir holds the workspace: no tmpfs there" ;;
    *) $bb mount -t tmpfs tmpfs "/newroot/$dir" || fail "tmpfs on /$dir" ;;
    esac
done
$bb mount -t proc proc /newroot/proc
$bb mount -t sysfs sys /newroot/sys
$bb mount -t devtmpfs dev /newroot/dev
$bb mount -t 9p -o "$p9" out "/newroot$out" || fail "mounting the results share on $out"
exec $bb switch_root /newroot /bin/bash "$guest"
