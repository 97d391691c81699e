#!/bin/sh
# /init of the built-in "tiny" template: Debian's kernel, busybox and this script.
#
# It does for a NoCloud seed what cloud-init does for a shell-script user-data, and nothing
# more: find the filesystem labelled cidata, take the instance id and host name from
# meta-data, run user-data if it is a "#!" script, then power off. Anything else in
# user-data (#cloud-config, MIME multipart) is refused with a message on the console,
# because this guest has no cloud-init to understand it.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /run /var/tmp && mount -t tmpfs run /run
for module in $(cat /lib/modules/load.list); do
    insmod "/lib/modules/$module.ko" 2>/dev/null
done
ip link set lo up 2>/dev/null

say() { echo "tiny: $*" > /dev/console; }
finish() { sync; poweroff -f; }

# An ISO9660 volume labelled cidata, found by reading its primary volume descriptor
# (busybox's findfs misses ISO images smaller than about 1 MiB); findfs for FAT seeds.
find_seed() {
    for block in /sys/block/*; do
        device=/dev/${block##*/}
        [ -b "$device" ] || continue
        magic=$(dd if="$device" bs=1 skip=32769 count=5 2>/dev/null)
        label=$(dd if="$device" bs=1 skip=32808 count=6 2>/dev/null)
        if [ "$magic" = CD001 ] && { [ "$label" = cidata ] || [ "$label" = CIDATA ]; }; then
            echo "$device"
            return 0
        fi
    done
    findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null
}

seed=""
tries=0
while [ $tries -lt 100 ]; do
    seed=$(find_seed) && break
    tries=$((tries + 1))
    usleep 50000
done
if [ -z "$seed" ]; then
    say "no NoCloud seed (a filesystem labelled cidata) found"
    finish
fi
mkdir -p /run/cidata
if ! mount -o ro "$seed" /run/cidata 2>/dev/null && ! mount -t vfat -o ro "$seed" /run/cidata; then
    say "cannot mount the seed $seed"
    finish
fi
# meta-data is YAML; ours is its JSON form ("local-hostname": "NAME"), others write plain YAML.
name=$(sed -n -e 's/^ *"local-hostname": *"\([^"]*\)".*/\1/p' \
              -e 's/^local-hostname: *//p' /run/cidata/meta-data 2>/dev/null | head -n 1)
[ -n "$name" ] && hostname "$name"

if [ "$(head -c 2 /run/cidata/user-data 2>/dev/null)" != "#!" ]; then
    say "user-data is not a #! script; this guest runs shell-script user-data only"
    finish
fi
cp /run/cidata/user-data /run/user-data
chmod 0700 /run/user-data
umount /run/cidata
cd /
/run/user-data > /dev/console 2>&1
finish
