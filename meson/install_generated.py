#!/usr/bin/env python3
"""Install time (meson.add_install_script): have the sockpass CLI just built
generate its man pages and shell completions, and install them.

`sockpass __generate man DIR` writes *.1 and *.8 pages; `sockpass __generate
completions DIR` writes sockpass.bash, _sockpass (zsh) and sockpass.fish.
With --required no, a sockpass that cannot generate them is a note, not an
error (the `man` feature option's auto).
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

p = argparse.ArgumentParser()
p.add_argument("sockpass")
p.add_argument("--mandir", required=True)
p.add_argument("--datadir", required=True)
p.add_argument("--required", choices=["yes", "no"], default="no")
a = p.parse_args()

prefix = os.environ["MESON_INSTALL_DESTDIR_PREFIX"]
# meson names the built program relative to the build directory.
sockpass = os.path.join(os.environ["MESON_BUILD_ROOT"], a.sockpass)


def dest(*parts):
    # mandir/datadir are relative to the prefix, or absolute (then under DESTDIR).
    first = parts[0]
    if os.path.isabs(first):
        return os.environ.get("DESTDIR", "") + os.path.join(*parts)
    return os.path.join(prefix, *parts)


def generate(what, out):
    r = subprocess.run([sockpass, "__generate", what, out],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode == 0:
        return True
    msg = f"{sockpass} __generate {what} failed ({r.returncode}): {r.stdout.strip()}"
    if a.required == "yes":
        sys.exit(msg)
    print(f"note: {what} not installed: {msg}")
    return False


def install(src, d):
    os.makedirs(d, exist_ok=True)
    target = os.path.join(d, os.path.basename(src))
    shutil.copyfile(src, target)
    os.chmod(target, 0o644)
    print(f"Installing {os.path.basename(src)} to {d}")


with tempfile.TemporaryDirectory() as tmp:
    man = os.path.join(tmp, "man")
    if generate("man", man):
        for f in sorted(glob.glob(os.path.join(man, "*.[1-8]"))):
            install(f, dest(a.mandir, "man" + f[-1]))
    comp = os.path.join(tmp, "completions")
    if generate("completions", comp):
        where = {
            "sockpass.bash": ("bash-completion", "completions", "sockpass"),
            "_sockpass": ("zsh", "site-functions", "_sockpass"),
            "sockpass.fish": ("fish", "vendor_completions.d", "sockpass.fish"),
        }
        for name, (*d, final) in where.items():
            f = os.path.join(comp, name)
            if not os.path.exists(f):
                sys.exit(f"{sockpass} __generate completions wrote no {name}")
            renamed = os.path.join(tmp, final)
            shutil.copyfile(f, renamed)
            install(renamed, dest(a.datadir, *d))
            os.unlink(renamed)
