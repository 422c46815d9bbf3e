"""Per-kernel resources of the CUDA kernels as ptxas reports them (no GPU needed): registers, stack frame, spills,
static shared memory, and the occupancy those allow. What the device method calls reading what costs no device
time: spills, local-memory arrays and register-bound occupancy show here before any run.

    PYTHON=.venv-cuda/bin/python python scripts/ptxas_report.py [--arch 90] [--out benchmarks/results/ptxas_sm90.md]

Compiles every csrc/*/*_cuda.cu through scripts/nvcc_check.sh with NVCC_EXTRA="-Xptxas -v" (a CUDA build of torch
in $PYTHON's environment and nvcc under CUDA_HOME are needed), then writes a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Per SM (compute capability 8.0 / 9.0): 64 K registers, 2048 threads, 32 blocks; registers are allocated per
# warp in units of 256.
REGS_PER_SM, THREADS_PER_SM, BLOCKS_PER_SM, REG_UNIT = 65536, 2048, 32, 256

# Threads per block of each kernel (the kThreads / kElemThreads of the .cu files; render_triplane's kernels take
# 4 warps unless the decoder's tiles need the shared memory).
BLOCK = {"triplane_forward_kernel": 256, "triplane_backward_kernel": 256, "ray_march_forward_kernel": 128,
         "ray_march_backward_kernel": 128, "nearest_kernel": 128, "merge_kernel": 256, "gather_kernel": 256,
         "scatter_kernel": 256, "render_forward_kernel": 128, "render_backward_kernel": 128}

TYPES = {"f": "float", "d": "double", "N3c104HalfE": "half", "N3c108BFloat16E": "bfloat16"}
PATHS = {"Bf16Path": "bf16 mma", "Tf32Path": "3xTF32 mma", "F64Path": "f64 SIMT"}

# Shared memory an SM (sm_80 164 KiB, sm_90 228 KiB) and reserved a block.
SMEM_PER_SM = {"80": 164 * 1024, "86": 100 * 1024, "89": 100 * 1024, "90": 228 * 1024}
SMEM_RESERVED = 1024


def demangle(sym: str) -> str:
    """kernel<template args> from an Itanium-mangled name (enough for these kernels)."""
    m = re.search(r"\d+([a-z_]+_kernel)I(.*?)EEv", sym)
    if not m:
        return sym
    name, args = m.group(1), m.group(2)
    out = []
    for tok in re.finditer(r"N3c104HalfE|N3c108BFloat16E|NS\d*_\d+([A-Za-z0-9]+Path)E|Li\d+E|[fd]", args):
        t = tok.group(0)
        if tok.group(1):
            out.append(PATHS.get(tok.group(1), tok.group(1)))
        else:
            out.append(t[2:-1] if t.startswith("Li") else TYPES[t])
    return f"{name}<{', '.join(out)}>"


def render_shared_bytes(C: int, hidden: int, O: int, e_size: int, t_size: int, backward: bool, warps: int) -> int:
    """Dynamic shared memory of a render_triplane launch: csrc/render/render_tiles.cuh's make_layout, mirrored
    (tests/test_cuda_emu_render.py checks the two agree on the emulator's launches)."""
    def up(x, m):
        return (x + m - 1) // m * m

    def al(x):
        return up(x, 16)

    Cp, Hp, Op = up(C, 16), up(hidden, 16), up(O, 16)
    ldC, ldH, ldO = Cp + 16 // e_size, Hp + 16 // e_size, Op + 16 // e_size
    ldY, ldG = up(O - 1, 16 // t_size) + 16 // t_size, Cp + 16 // t_size
    block = al(Hp * ldC * e_size) + al(Op * ldH * e_size) + al(Hp * t_size) + al(Op * t_size)
    if backward:
        block += al((hidden * C + hidden + O * hidden + O) * t_size)
    f, a, y = 32 * ldC * e_size, 32 * ldH * e_size, 32 * ldY * t_size
    if backward:
        warp = al(f) + al(max(a, 32 * ldG * t_size)) + al(max(a, y)) + al(32 * ldO * e_size)
    else:
        warp = al(max(f, y)) + al(a)
    warp += al((3 * 32 + Op) * t_size)
    return block + warps * warp


# render_triplane at the paper's sizes (C 32, hidden 64, 1 + Co 33): (operand bytes, compute bytes) per path.
RENDER_PATH_SIZES = {"bf16 mma": (2, 4), "3xTF32 mma": (4, 4), "f64 SIMT": (8, 8)}
SMEM_OPTIN = 227 * 1024


def render_launch(kernel: str):
    """(threads, dynamic shared bytes) of a render kernel at the paper's sizes, or None for other kernels."""
    m = re.match(r"render_(forward|backward)_kernel<.*?, (bf16 mma|3xTF32 mma|f64 SIMT), \d+>", kernel)
    if not m:
        return None
    e, t = RENDER_PATH_SIZES[m.group(2)]
    for warps in (4, 2, 1):
        smem = render_shared_bytes(32, 64, 33, e, t, m.group(1) == "backward", warps)
        if smem <= SMEM_OPTIN:
            return 32 * warps, smem
    return None


def occupancy(regs: int, threads: int, smem: int = 0, arch: str = "90") -> float:
    warps = -(-threads // 32)
    regs_per_warp = -(-regs * 32 // REG_UNIT) * REG_UNIT
    by_regs = REGS_PER_SM // (regs_per_warp * warps) if regs else BLOCKS_PER_SM
    by_smem = SMEM_PER_SM.get(arch, 228 * 1024) // (smem + SMEM_RESERVED) if smem else BLOCKS_PER_SM
    blocks = min(by_regs, by_smem, THREADS_PER_SM // threads, BLOCKS_PER_SM)
    return blocks * threads / THREADS_PER_SM


def parse(log: str, arch: str = "90"):
    rows = []
    cur = None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            cur = {"kernel": demangle(m.group(1))}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
            continue
        m = re.search(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?", line)
        if m:
            cur["regs"] = int(m.group(1))
            cur["smem"] = int(m.group(2) or 0)
            base = cur["kernel"].split("<")[0]
            cur["threads"] = BLOCK.get(base, 0)
            cur["dyn_smem"] = 0
            launch = render_launch(cur["kernel"])
            if launch:
                cur["threads"], cur["dyn_smem"] = launch
            cur["occupancy"] = (occupancy(cur["regs"], cur["threads"], cur["smem"] + cur["dyn_smem"], arch)
                                if cur["threads"] else float("nan"))
            rows.append(cur)
            cur = None
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="90")
    p.add_argument("--out", default=None, help="markdown file (default: print only)")
    a = p.parse_args(argv)
    py = os.environ.get("PYTHON", sys.executable)
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    version = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                             check=True).stdout.strip()
    nvcc_version = subprocess.run([f"{cuda_home}/bin/nvcc", "--version"], capture_output=True, text=True,
                                  check=True).stdout.strip().splitlines()[-1]
    sources = json.loads((ROOT / "csrc" / "build.json").read_text())["cuda_sources"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHON=py, CUDA_HOME=cuda_home, ARCH=a.arch, OUT=tmp, NVCC_EXTRA="-Xptxas -v")
        for src in sources:  # one call per file, so every row knows its source
            res = subprocess.run(["bash", str(ROOT / "scripts" / "nvcc_check.sh"), str(ROOT / "csrc" / src)],
                                 capture_output=True, text=True, env=env)
            if res.returncode != 0:
                sys.exit(f"nvcc failed on {src}:\n{res.stderr[-4000:]}")
            rows += [dict(r, source=src) for r in parse(res.stderr, a.arch)]
    rows.sort(key=lambda r: (r["source"], r["kernel"]))
    lines = [f"# ptxas resources, sm_{a.arch}", "",
             f"nvcc: {nvcc_version}; torch headers {version}; flags of scripts/nvcc_check.sh. Occupancy: resident "
             "threads per SM allowed by registers, threads, blocks and shared memory, as a fraction of 2048. "
             "render_triplane's kernels (template arguments: planes' dtype, arithmetic path, gather vector width) "
             "at the paper's sizes (C 32, hidden 64, 1 + Co 33: the dynamic shared memory of their launch, "
             "render_tiles.cuh's layout; 4 warps a block, 2 for the float64 backward); the other kernels' shared "
             "memory is static and a few KiB at most. Written by scripts/ptxas_report.py; no GPU involved.", "",
             "| kernel | threads | registers | occupancy | stack (B) | spill st/ld (B) | static smem (B) | "
             "dynamic smem (B) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['kernel']}` | {r['threads']} | {r['regs']} | {r['occupancy']:.0%} | {r['stack']} | "
                     f"{r['spill_st']}/{r['spill_ld']} | {r['smem']} | {r['dyn_smem'] or ''} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
