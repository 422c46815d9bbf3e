"""The compiled extension: `import oneshot` never fails without it (one ExtensionUnavailableWarning that says what
to rebuild; the ops fall back to the reference; backend="native" raises that message), and a stale build (another
torch) is reported instead of loaded.

The fallback runs in a subprocess on a temporary copy of the package's Python files, with cwd and PYTHONPATH set
to the copy, so the checkout (and its compiled library) is not importable. An editable install's meta-path finder
would otherwise still resolve `oneshot._C` inside the checkout, so the child removes such finders first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import oneshot
from oneshot import ops

PKG = Path(oneshot.__file__).resolve().parent

CHILD = textwrap.dedent(
    r"""
    import json, sys, warnings
    # An editable install maps `oneshot.*` to the checkout from a meta-path finder: drop it (PYTHONPATH decides).
    sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import oneshot
        import torch
        from oneshot import ops
        torch.manual_seed(0)
        planes = torch.randn(2, 3, 4, 5, 6)
        points = torch.rand(2, 7, 3) - 0.5
        colors, dens = torch.randn(3, 6, 2), torch.randn(3, 6)
        depths = torch.sort(torch.rand(3, 6), -1).values
        rp, rf = torch.rand(2, 9, 3) * 2 - 1, torch.randn(2, 9, 3)
        tri = ops.triplane_sample(planes, points)
        tri_ref = ops.reference.triplane_sample(planes, points)
        rm = ops.ray_march(colors, dens, depths)
        rm_ref = ops.reference.ray_march(colors, dens, depths)
        ra = ops.rasterize_points(rp, rf, (4, 5))
        ra_ref = ops.reference.rasterize_points(rp, rf, (4, 5))
        pl = planes.clone().requires_grad_()
        ops.triplane_sample(pl, points).sum().backward()
    ok = (torch.equal(tri, tri_ref) and all(torch.equal(a, b) for a, b in zip(rm, rm_ref))
          and all(torch.equal(a, b) for a, b in zip(ra, ra_ref)) and pl.grad is not None)
    native_error = None
    try:
        ops.triplane_sample(planes, points, backend="native")
    except RuntimeError as exc:
        native_error = str(exc)
    print(json.dumps({
        "file": oneshot.__file__,
        "warnings": [[w.category.__name__, str(w.message)] for w in caught],
        "ok": ok,
        "native_error": native_error,
        "info": ops.backend_info(),
        "has_op": hasattr(torch.ops.oneshot, "triplane_sample"),
    }))
    """
)


def _fake_install(tmp_path: Path, with_library: bool, build_info: dict | None) -> Path:
    root = tmp_path / "site"
    (root / "oneshot" / "ops").mkdir(parents=True)
    for src in PKG.glob("*.py"):
        shutil.copy(src, root / "oneshot" / src.name)
    for src in (PKG / "ops").glob("*.py"):
        shutil.copy(src, root / "oneshot" / "ops" / src.name)
    if with_library:
        libs = list(PKG.glob("_C*.so")) + list(PKG.glob("_C*.pyd"))
        assert libs, f"no compiled oneshot._C in {PKG}"
        for lib in libs:
            shutil.copy(lib, root / "oneshot" / lib.name)
    if build_info is not None:
        (root / "oneshot" / "_C_build.json").write_text(json.dumps(build_info))
    return root


def _run_child(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ONESHOT_JIT", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = str(root)
    env["PYTHONWARNINGS"] = ""
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"child failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve() == (root / "oneshot" / "__init__.py").resolve(), result["file"]
    return result


def _only_warning(result: dict) -> str:
    ours = [m for cat, m in result["warnings"] if cat == "ExtensionUnavailableWarning"]
    assert len(ours) == 1, f"expected exactly one ExtensionUnavailableWarning, got {result['warnings']}"
    return ours[0]


def _check_fallback(result: dict, why: str) -> str:
    msg = _only_warning(result)
    assert why in msg, msg
    assert "--no-build-isolation" in msg, msg  # says how to rebuild
    assert "reference" in msg, msg  # and what happens meanwhile
    assert result["ok"], "the ops must fall back to the reference and give its results"
    assert result["native_error"] is not None, "backend='native' must raise RuntimeError without the extension"
    assert "backend='native' is unavailable" in result["native_error"]
    assert why in result["native_error"] and "--no-build-isolation" in result["native_error"]
    info = result["info"]
    assert info["native_cpu"] is False and info["native_cuda"] is False
    assert why in info["extension_error"]
    return msg


def test_import_without_compiled_extension(tmp_path):
    result = _run_child(_fake_install(tmp_path, with_library=False, build_info=None))
    _check_fallback(result, "is not built")
    assert not result["has_op"]


def test_stale_extension_is_reported_not_loaded(tmp_path):
    info = {"torch": "2.9.0", "cuda": None, "with_cuda": False, "cuda_arch_list": None}
    result = _run_child(_fake_install(tmp_path, with_library=True, build_info=info))
    msg = _check_fallback(result, "stale")
    assert "built against torch 2.9.0" in msg and torch.__version__ in msg
    assert result["info"]["extension_built_against_torch"] == "2.9.0"
    assert not result["has_op"], "a stale library must not be loaded"


def test_extension_without_build_info_is_not_loaded(tmp_path):
    result = _run_child(_fake_install(tmp_path, with_library=True, build_info=None))
    _check_fallback(result, "no _C_build.json")
    assert not result["has_op"]


def test_copied_extension_with_matching_build_info_loads(tmp_path):
    """The same copy with a correct _C_build.json loads: the tests above fail for the reason they claim."""
    info = json.loads((PKG / "_C_build.json").read_text())
    result = _run_child(_fake_install(tmp_path, with_library=True, build_info=info))
    assert not [m for cat, m in result["warnings"] if cat == "ExtensionUnavailableWarning"], result["warnings"]
    assert result["info"]["native_cpu"] is True and result["has_op"]
    assert result["native_error"] is None


def test_backend_info_in_this_environment():
    info = ops.backend_info()
    assert info["native_cpu"] is True, info
    assert info["extension_error"] == ""
    assert info["extension_source"] in ("prebuilt", "jit")
    assert info["extension_built_against_torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["triton"] is False
    if torch.version.cuda is None:  # a CPU torch: no CUDA kernels can have been built
        assert info["native_cuda"] is False


def test_no_extension_warning_in_this_environment():
    from oneshot import _extension

    st = _extension.status()
    assert st.loaded and st.error == ""
    for op in ("triplane_sample", "triplane_sample_backward", "ray_march", "ray_march_backward",
               "rasterize_points", "rasterize_points_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"oneshot::{op}", "CPU"), op


@pytest.mark.parametrize("built,running,stale", [
    ("2.13.0+cpu", "2.13.0+cpu", False),
    ("2.13.1", "2.13.0+cpu", False),  # same major.minor: ABI-compatible
    ("2.9.0", "2.13.0", True),
    ("2.13.0", "2.14.0", True),
    ("3.13.0", "2.13.0", True),
])
def test_version_mismatch_rule(monkeypatch, built, running, stale):
    from oneshot import _extension

    monkeypatch.setattr(torch, "__version__", running)
    why = _extension._mismatch({"torch": built, "with_cuda": False})
    assert bool(why) is stale, why
    if stale:
        assert built in why and running in why


@pytest.mark.slow
def test_jit_build_compiles_the_checkout_and_registers_native_kernels(tmp_path):
    """ONESHOT_JIT=force compiles csrc/ (the list in build.json) with torch.utils.cpp_extension.load and the
    native kernels then run: the JIT path cannot rot unnoticed. Slow: it compiles every translation unit."""
    code = textwrap.dedent(
        """
        import json, torch, oneshot
        from oneshot import ops
        info = ops.backend_info()
        planes, points = torch.randn(1, 3, 4, 5, 6), torch.rand(1, 7, 3) - 0.5
        same = torch.allclose(ops.triplane_sample(planes, points, backend="native"),
                              ops.triplane_sample(planes, points, backend="reference"), atol=1e-6)
        print(json.dumps({"info": info, "same": same}))
        """
    )
    env = dict(os.environ, ONESHOT_JIT="force", TORCH_EXTENSIONS_DIR=str(tmp_path), MAX_JOBS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["info"]["extension_source"] == "jit", res
    assert res["info"]["native_cpu"] and res["same"], res
