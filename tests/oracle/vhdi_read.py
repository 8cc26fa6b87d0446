#!/usr/bin/env python3
"""Independent oracle: reads a VHD/VHDX (with its differencing chain) through libvhdi and
writes the whole virtual disk as raw.

    ops/.venv/bin/python tests/oracle/vhdi_read.py IMAGE OUT.raw [PARENT [GRANDPARENT ...]]

With no PARENT arguments, parents are found from libvhdi's parent file name: the path as
written (backslashes read as slashes, a drive letter dropped) relative to the child's folder,
then each shorter tail of it there, down to the bare file name. libvhdi reports one name per
image (VHD: the dynamic header's parent name; VHDX: absolute_win32_path, else volume_path,
else relative_path). Tests pass the chain explicitly so the oracle
does not depend on the same path mapping as vdrep.

Use the patched build (`bash ops/build-libvhdi.sh`): upstream libvhdi 20260901 misreads VHD
differencing bitmaps and absent VHDX sector bitmap blocks (see ops/patches/README.md).
Zero runs are not written (the output is sparse) and the file is truncated to the media size.
Prints one line of JSON per image of the chain on stderr.
"""

import json
import os
import sys

import pyvhdi

CHUNK = 1 << 20
DIFFERENCING = 4  # LIBVHDI_DISK_TYPE_DIFFERENTIAL


def parent_candidates(child_path, name):
    name = name.rstrip("\0")
    if name.startswith("\\\\?\\"):
        name = name[4:]
    unix = name.replace("\\", "/")
    if len(unix) >= 2 and unix[1] == ":":
        unix = unix[2:]
    child_dir = os.path.dirname(os.path.abspath(child_path))
    out = []
    if unix and not unix.startswith("/"):
        out.append(os.path.normpath(os.path.join(child_dir, unix)))
    # An absolute Windows path cannot exist here: try its tails (`store/base.vhd`, then
    # `base.vhd`) in the child's folder.
    parts = [p for p in unix.split("/") if p]
    for k in range(len(parts)):
        out.append(os.path.join(child_dir, *parts[k:]))
    return out


def open_chain(image, parents):
    """Opens the image and its parents; returns the list of pyvhdi files, child first."""
    files = []
    path = image
    explicit = list(parents)
    while True:
        f = pyvhdi.file()
        f.open(path)
        files.append(f)
        info = {
            "path": path,
            "disk_type": f.get_disk_type(),
            "media_size": f.get_media_size(),
            "identifier": str(f.get_identifier()),
        }
        if f.get_disk_type() != DIFFERENCING:
            print(json.dumps(info), file=sys.stderr)
            break
        info["parent_identifier"] = str(f.get_parent_identifier())
        info["parent_filename"] = f.get_parent_filename()
        print(json.dumps(info), file=sys.stderr)
        if explicit:
            path = explicit.pop(0)
        else:
            tried = parent_candidates(path, f.get_parent_filename() or "")
            found = [p for p in tried if os.path.isfile(p)]
            if not found:
                sys.exit(
                    f"vhdi_read: parent of {path} not found (tried {tried}); pass the chain "
                    "explicitly (libvhdi never reports a VHDX relative_path: it looks the key "
                    "up with length 12 instead of 13)"
                )
            path = found[0]
        if len(files) > 64:
            sys.exit("vhdi_read: chain deeper than 64")
    if explicit:
        sys.exit(f"vhdi_read: {len(explicit)} parent(s) given beyond the chain's base")
    # Link from the base up: set_parent checks the child's parent identifier against the
    # parent's identifier (VHD unique id / VHDX DataWriteGuid).
    for child, parent in zip(files, files[1:]):
        child.set_parent(parent)
    return files


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    image, out = argv[1], argv[2]
    files = open_chain(image, argv[3:])
    top = files[0]
    size = top.get_media_size()
    zero = bytes(CHUNK)
    with open(out, "wb") as w:
        offset = 0
        while offset < size:
            n = min(CHUNK, size - offset)
            data = top.read_buffer_at_offset(n, offset)
            if len(data) != n:
                sys.exit(f"vhdi_read: short read at {offset}: {len(data)} of {n}")
            if data != zero[:n]:
                w.seek(offset)
                w.write(data)
            offset += n
        w.truncate(size)
    for f in files:
        f.close()


if __name__ == "__main__":
    main(sys.argv)
