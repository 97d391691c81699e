#!/bin/sh
# /init of the initramfs of bes's Debian images (debian.py): busybox, the image's own virtio
# and ext4 modules, and this script.
#
# It only loads the disk drivers, mounts the root filesystem, found by its label (device names
# differ between hypervisors and disk orders), and hands over to the image's systemd. Debian's
# own initramfs would do the same through udev, which costs seconds under emulation.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /lib/modules/load.list); do
    insmod "/lib/modules/$module.ko" 2>/dev/null
done

fail() {
    echo "bes-initramfs: $*" > /dev/console
    poweroff -f
}

LABEL=bes-root
root=""
tries=0
while [ $tries -lt 200 ]; do
    root=$(findfs "LABEL=$LABEL" 2>/dev/null) && break
    tries=$((tries + 1))
    usleep 50000
done
[ -n "$root" ] || fail "no root filesystem labelled $LABEL"
mkdir -p /newroot
mount -t ext4 -o rw,noatime "$root" /newroot || fail "cannot mount $root"
for api in dev proc sys; do
    mount -o move "/$api" "/newroot/$api"
done
exec switch_root /newroot /sbin/init
