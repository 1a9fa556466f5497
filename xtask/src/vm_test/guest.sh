# Runs as PID 1 in the VM of `cargo xtask vm-test` (a copy in $out), on the
# machine's root filesystem (read-only, tmpfs on /tmp, /run and /var/tmp
# unless the workspace is there; then TMPDIR is /run/tmp). Reads $out/config (modules, nofile, args)
# and $out/tests (name, binary, directory per line); writes each binary's
# output to $out/<binary>.log, its exit status to $out/results, and
# $out/finished at the end; then stops the VM.
set -u
out=$(sed -n 's/.* vmtest\.out=\([^ ]*\).*/\1/p' /proc/cmdline)
. "$out/config"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp CI=true RUST_BACKTRACE=1
# A workspace under /tmp leaves /tmp read-only here (the tmpfs would hide
# it): tests that write temporary files get /run/tmp instead.
if ! [ -w /tmp ]; then
    mkdir -p /run/tmp
    export HOME=/run/tmp TMPDIR=/run/tmp
fi

# The kernel loads modules on demand (nf_tables for iptables, veth, ...)
# through this helper, from the unpacked package's modules.
printf '#!/bin/sh\nexec /usr/sbin/modprobe -d %s "$@"\n' "$modules" >"$out/modprobe"
chmod +x "$out/modprobe"
echo "$out/modprobe" >/proc/sys/kernel/modprobe
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
ulimit -n "$nofile"
echo "vm-test: Linux $(uname -r), $(nproc) CPUs, $(($(sed -n 's/MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) / 1024)) MiB"

while read -r name binary dir skips; do
    log="$out/$(basename "$binary").log"
    start=$SECONDS
    # shellcheck disable=SC2086 # $args and $skips are lists of words
    (cd "$dir" && "$binary" --show-output ${args:-} ${skips:-}) >"$log" 2>&1
    status=$?
    echo "$name $(basename "$binary") $status $((SECONDS - start))" >>"$out/results"
    echo "vm-test: $name exited $status after $((SECONDS - start)) s"
done <"$out/tests"
touch "$out/finished"
sync
echo b >/proc/sysrq-trigger  # with -no-reboot, QEMU exits
