#!/usr/bin/env python3
"""Build the sockpass staticlib, the sockpassd broker and the sockpass CLI
with cargo, and copy them where meson expects its outputs.

meson owns what cargo does not: the shared library's SONAME, its version
script, pkg-config and installation (as librsvg's meson/cargo_wrapper.py).
"""
import argparse
import os
import shutil
import subprocess
import sys

# sockpassd's own default (rust/sockpassd/src/daemon.rs): passed to cargo only
# when it differs, so this build shares compiled crates with plain cargo ones.
BUILTIN_POLICY = "/etc/sockpass/policy.conf"

p = argparse.ArgumentParser()
p.add_argument("--cargo", required=True)
p.add_argument("--manifest", required=True)
p.add_argument("--target-dir", required=True)
p.add_argument("--profile", choices=["release", "debug"], default="release")
p.add_argument("--staticlib-out", required=True)
p.add_argument("--broker-out", required=True)
p.add_argument("--cli-out", required=True)
p.add_argument("--default-policy", default=BUILTIN_POLICY)
a = p.parse_args()

cmd = [a.cargo, "build", "--manifest-path", a.manifest, "--target-dir", a.target_dir,
       "-p", "sockpass-ffi", "-p", "sockpassd", "--quiet"]
if a.profile == "release":
    cmd.append("--release")
env = dict(os.environ)
env.setdefault("CARGO_TERM_COLOR", "never")
if a.default_policy != BUILTIN_POLICY:
    env["SOCKPASS_DEFAULT_POLICY"] = a.default_policy
else:
    env.pop("SOCKPASS_DEFAULT_POLICY", None)
r = subprocess.run(cmd, env=env)
if r.returncode != 0:
    sys.exit(r.returncode)
out = os.path.join(a.target_dir, a.profile)
shutil.copy2(os.path.join(out, "libsockpass_ffi.a"), a.staticlib_out)
shutil.copy2(os.path.join(out, "sockpassd"), a.broker_out)
shutil.copy2(os.path.join(out, "sockpass"), a.cli_out)
