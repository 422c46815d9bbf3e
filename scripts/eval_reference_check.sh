#!/usr/bin/env bash
# Check oneshot.eval's LPIPS and FID networks against the packages papers use (lpips 0.1.4 with torchvision's
# AlexNet, pytorch-fid 0.3.0's FID Inception): random weights in their layouts, built by those packages in a
# separate venv (torch 2.14.1 + torchvision 0.29.1, which the CPU torch of .venv cannot import beside), loaded by
# oneshot's loaders in .venv; the outputs must agree. lpips' real v0.1 linear heads are used as shipped.
# Usage: bash scripts/eval_reference_check.sh  (REF_VENV=/tmp/oneshot-eval-ref by default, an existing venv with
# torch 2.14.1 such as CI's .venv-cuda is reused; ~6 GB when new)
set -euo pipefail
cd "$(dirname "$0")/.."
REF=${REF_VENV:-/tmp/oneshot-eval-ref}
WORK=$(mktemp -d)
[ -x "$REF/bin/python" ] || "${PYTHON:-python3}" -m venv "$REF"
"$REF/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 numpy pillow tqdm scipy
"$REF/bin/pip" install -q --no-deps lpips==0.1.4 pytorch-fid==0.3.0
"$REF/bin/python" - "$WORK" <<'PY'
import sys, torch, torchvision, lpips, pytorch_fid.inception as I
from pathlib import Path
w = Path(sys.argv[1]); torch.manual_seed(0); out = {}
m = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
alex = torchvision.models.alexnet()
feat = {f"features.{k}": v for s in (m.net.slice1, m.net.slice2, m.net.slice3, m.net.slice4, m.net.slice5)
        for k, v in s.state_dict().items()}
alex.load_state_dict({**alex.state_dict(), **feat}); torch.save(alex.state_dict(), w / "alexnet.pth")
heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
out["heads"] = str(heads)
for n, s in (("64", 64), ("32", 32), ("128", 128)):
    a, b = torch.rand(3, 3, s, s) * 2 - 1, torch.rand(3, 3, s, s) * 2 - 1
    with torch.no_grad():
        out["lpips" + n] = (a, b, m(a, b).flatten())
inc = I._inception_v3(num_classes=1008, aux_logits=False, weights=None)
for name, blk in (("Mixed_5b", I.FIDInceptionA(192, 32)), ("Mixed_5c", I.FIDInceptionA(256, 64)),
                  ("Mixed_5d", I.FIDInceptionA(288, 64)), ("Mixed_6b", I.FIDInceptionC(768, 128)),
                  ("Mixed_6c", I.FIDInceptionC(768, 160)), ("Mixed_6d", I.FIDInceptionC(768, 160)),
                  ("Mixed_6e", I.FIDInceptionC(768, 192)), ("Mixed_7b", I.FIDInceptionE_1(1280)),
                  ("Mixed_7c", I.FIDInceptionE_2(2048))):
    setattr(inc, name, blk)
sd = {k: v for k, v in inc.state_dict().items() if not k.endswith("num_batches_tracked")}
for k in sd:
    if k.endswith("running_var") or k.endswith("bn.weight"): sd[k] = torch.rand_like(sd[k]) + 0.5
    elif k.endswith("running_mean") or k.endswith(".bias"): sd[k] = torch.randn_like(sd[k]) * 0.1
torch.save(sd, w / "pt_inception.pth")
I.load_state_dict_from_url = lambda *a, **k: sd
net = I.InceptionV3([3]).eval()
x = torch.rand(3, 3, 128, 128)
with torch.no_grad():
    out["fid"] = (x, net(x)[0].flatten(1))
torch.save(out, w / "ref.pt")
PY
.venv/bin/python - "$WORK" <<'PY'
import sys, torch
from pathlib import Path
from oneshot.eval import load_fid_inception, load_lpips
w = Path(sys.argv[1]); ref = torch.load(w / "ref.pt"); bad = 0
lp = load_lpips(w / "alexnet.pth", ref["heads"])
with torch.no_grad():
    for k in ("lpips32", "lpips64", "lpips128"):
        a, b, r = ref[k]; d = float((lp(a, b) - r).abs().max()); bad += d > 1e-6
        print(f"{k}: max |oneshot - lpips| = {d:.3g} (values {[round(v, 4) for v in r.tolist()]})")
    x, r = ref["fid"]; d = float((load_fid_inception(w / "pt_inception.pth")(x) - r).abs().max()); bad += d > 1e-5
    print(f"FID Inception pool3: max |oneshot - pytorch-fid| = {d:.3g} (features up to {float(r.abs().max()):.3g})")
sys.exit(1 if bad else 0)
PY
echo "oneshot.eval agrees with lpips and pytorch-fid"
