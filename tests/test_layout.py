"""The repository layout cannot shadow third-party packages (issue 14).

transformers >= 5.25 imports Hugging Face's ``kernels`` distribution when SegFormer is imported. While the Triton
kernels lived in a top-level ``kernels/`` package, any process with the checkout on ``sys.path`` (``python -m``
from the root, ``python -m pytest``, ``PYTHONPATH=<checkout>``) imported ours instead and SegFormer failed. Now
only ``oneshot`` is an importable package at the root; these tests keep it that way.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: whatever this pytest process has on sys.path must not decide the answer.
PROBE = r"""
import importlib.metadata as md, json, sys
from pathlib import Path
out = {"path0": sys.path[0]}
import kernels
out["kernels_file"] = str(Path(kernels.__file__).resolve())
dist_files = md.distribution("kernels").files or []
out["kernels_owned"] = any(str(Path(f.locate()).resolve()) == out["kernels_file"] for f in dist_files)
import transformers.models.segformer.modeling_segformer as seg
out["segformer"] = hasattr(seg, "SegformerModel")
import oneshot.kernels.triplane as tk
out["oneshot_kernels"] = str(Path(tk.__file__).resolve())
out["triton_launcher"] = callable(getattr(tk, "triplane_forward", None))
print(json.dumps(out))
"""


def _hf_kernels_installed() -> bool:
    try:
        md.distribution("kernels")
    except md.PackageNotFoundError:
        return False
    return True


needs_hf_kernels = pytest.mark.skipif(
    not _hf_kernels_installed(), reason="Hugging Face's `kernels` distribution is not installed (pip install .[test])")


def _probe(env_extra: dict[str, str], args: list[str]) -> dict:
    pytest.importorskip("transformers")
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"probe failed from {ROOT}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(out: dict) -> None:
    assert out["segformer"]
    assert out["kernels_owned"], f"`import kernels` gave {out['kernels_file']}, not Hugging Face's package"
    assert Path(out["oneshot_kernels"]) == ROOT / "oneshot" / "kernels" / "triplane.py" or \
        "site-packages" in out["oneshot_kernels"]
    assert out["triton_launcher"]


@needs_hf_kernels
def test_hf_kernels_and_segformer_import_from_the_repository_root():
    """``python -c`` from the root puts the root first on sys.path, as ``python -m pytest`` does."""
    out = _probe({}, ["-c", PROBE])
    assert out["path0"] == ""  # the current directory: the checkout root
    _check(out)


@needs_hf_kernels
def test_hf_kernels_and_segformer_import_with_the_checkout_on_pythonpath():
    _check(_probe({"PYTHONPATH": str(ROOT)}, ["-c", PROBE]))


def test_only_oneshot_is_a_regular_package_at_the_root():
    """A folder with ``__init__.py`` (or a ``.py`` file) at the root is importable whenever the root is on
    sys.path and wins over any installed package of that name. Namespace folders (no ``__init__.py``) lose
    to installed packages, so they are harmless."""
    packages = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    modules = sorted(p.stem for p in ROOT.glob("*.py") if p.name != "setup.py")
    assert packages == ["oneshot"], packages
    assert modules == [], modules


def _installed_top_level_names() -> dict[str, list[str]]:
    return {k.lower(): v for k, v in md.packages_distributions().items()}


def _names_importable_from(folder: Path) -> set[str]:
    names = {p.stem for p in folder.glob("*.py")}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return names


@pytest.mark.parametrize("folder", ["", "benchmarks", "scripts", "tests"])
def test_no_module_in_a_script_folder_shadows_an_installed_distribution(folder):
    """Scripts run as ``python benchmarks/run.py`` put their own folder first on sys.path (pytest does the same
    for tests/): a module there named like an installed package would shadow it."""
    installed = _installed_top_level_names()
    # oneshot is itself installed (editable); the root's own package is meant to be found
    clashes = {n: installed[n.lower()] for n in _names_importable_from(ROOT / folder)
               if n.lower() in installed and n != "oneshot" and n != "setup"}
    assert not clashes, f"modules in {folder or '.'}/ shadow installed distributions: {clashes}"


def test_oneshot_kernels_lives_inside_the_package():
    import oneshot

    assert (Path(oneshot.__file__).parent / "kernels" / "__init__.py").exists()
    assert not (ROOT / "kernels").exists()
