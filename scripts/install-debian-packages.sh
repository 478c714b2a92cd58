#!/bin/sh
# Debian packages the project uses, installed where apt is available (root or sudo):
#   dataset-fashion-mnist  the image task's data (not on PyPI)
#   bubblewrap             the sandbox `ftlib grade` runs learner code in
#   libtcmalloc-minimal4   a memory allocator that keeps training's peak memory down
#                          (`ftlib finetune` uses it where present; see ftlib/cli.py)
# Where they cannot be installed this says what to do and carries on: the text tasks
# need neither, and `ftlib grade` warns loudly and degrades to time and memory limits.
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
need=""
[ -f "$FMNIST" ] || need="$need dataset-fashion-mnist"
command -v bwrap >/dev/null 2>&1 || need="$need bubblewrap"
ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal.so.4 || need="$need libtcmalloc-minimal4"
[ -z "$need" ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "Installing Debian packages:$need"
    log=$(mktemp)
    if $SUDO apt-get update -qq >"$log" 2>&1 &&
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >>"$log" 2>&1; then
        rm -f "$log"
        exit 0
    fi
    tail -n 20 "$log" >&2
    rm -f "$log"
fi
echo "NOTE: could not install the Debian package(s):$need" >&2
echo "      On Debian/Ubuntu run: sudo apt-get install$need" >&2
echo "      dataset-fashion-mnist is needed for the image task (files in /usr/share/datasets/fashion-mnist);" >&2
echo "      bubblewrap isolates learner code in \`ftlib grade\`; libtcmalloc-minimal4 lowers training's" >&2
echo "      peak memory by about 0.4 GB. Text tasks work without any of them." >&2
exit 0
