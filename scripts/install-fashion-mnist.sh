#!/bin/sh
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (not on PyPI).
# Installs it where apt is available; otherwise says what to do and carries on,
# since the text tasks (the defaults) do not need it.
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist && exit 0
    fi
fi
echo "NOTE: Fashion-MNIST (the image task) is not installed and could not be installed here." >&2
echo "      On Debian/Ubuntu run: sudo apt-get install dataset-fashion-mnist" >&2
echo "      (files go to $DIR). Text tasks work without it." >&2
exit 0
