"""``oneshot evaluate``'s promises beyond the scores themselves (test_eval.py): a pair's numbers do not depend on its
batch, an interrupted run resumes only with what it was started with (each refusal named), FID says when it has too
few pairs, and videos as --data need the faces extra."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from test_eval_protocol import _network_files, tiny_setup  # noqa: F401 - tiny_setup is a fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def _evaluate(*args) -> tuple[int, str]:
    """(exit code, stderr) of ``oneshot evaluate ARGS``."""
    from oneshot.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["evaluate"] + [str(a) for a in args])
    return code, err.getvalue()


def _rows(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_a_pairs_numbers_do_not_depend_on_its_batch(tiny_setup, tmp_path, monkeypatch):  # noqa: F811
    """The same six self-reenactment pairs scored one at a time and three at a time give the same numbers (renders with
    evenly spaced samples and a per-call seed; every per-pair metric, networks included), to float32 rounding."""
    import oneshot.data

    root, _, _ = tiny_setup
    nets = _network_files(tmp_path)
    nets = nets[:nets.index("--inception")] + nets[nets.index("--arcface"):]  # LPIPS and CSIM; FID is not per pair
    batches = []
    real = oneshot.data.collate_pairs

    def collate(ds, pairs, *args, **kwargs):  # the pairs rendered at once
        batches.append(len(pairs))
        return real(ds, pairs, *args, **kwargs)

    monkeypatch.setattr(oneshot.data, "collate_pairs", collate)
    rows = {}
    for batch in (1, 3):
        batches.clear()
        out = tmp_path / f"batch{batch}"
        code, err = _evaluate("--checkpoint", root / "avatar.safetensors", "--data", root / "data", "--protocol",
                              "self", "--no-sr", "--no-faces", "--batch", batch, "--out", out, "--quiet", *nets)
        assert code == 0, err
        assert batches[:6 // batch] == [batch] * (6 // batch)  # then grid.png's renders, one pair each
        rows[batch] = _rows(out)
    assert len(rows[1]) == 6 and {"psnr", "ssim", "l1", "lpips", "csim"} <= set(rows[1][0])
    ids = ("source", "target", "identity")
    assert [{k: r[k] for k in ids} for r in rows[1]] == [{k: r[k] for k in ids} for r in rows[3]]
    # Float32 rounding is all that may differ: a batched matrix product rounds differently from a single one (the
    # encoders' GEMMs block by row count), ~1e-7 relative in the renders; the scores agree to 1e-5 relative.
    worst = max(abs(a[m] - b[m]) / abs(b[m]) for a, b in zip(rows[1], rows[3]) for m in a if m not in ids)
    print(f"largest relative difference between batch 1 and batch 3 scores: {worst:.2e}")
    for a, b in zip(rows[1], rows[3]):
        assert {m: a[m] for m in a if m not in ids} == pytest.approx({m: b[m] for m in b if m not in ids}, rel=1e-5)


@pytest.fixture(scope="module")
def one_pair_run(tiny_setup, tmp_path_factory):  # noqa: F811
    """An evaluation of one self-reenactment pair with the FID Inception: (OUT, its arguments, its stderr)."""
    from conftest import num_threads

    root, _, _ = tiny_setup
    d = tmp_path_factory.mktemp("one_pair")
    nets = _network_files(d)
    args = ["--checkpoint", root / "avatar.safetensors", "--data", root / "data", "--protocol", "self", "--no-sr",
            "--no-faces", "--limit", "1", "--batch", "1", "--inception", nets[nets.index("--inception") + 1]]
    with num_threads(1):
        code, err = _evaluate(*args, "--out", d / "out")
    assert code == 0, err
    return d / "out", args, err


def test_fid_needs_two_pairs_and_says_so(one_pair_run):
    out, _, err = one_pair_run
    s = json.loads((out / "metrics.json").read_text())
    assert s["pairs"] == 1 and "fid" not in s["metrics"] and {"psnr", "ssim", "l1"} <= set(s["metrics"])
    why = "needs at least 2 pairs (a covariance), got 1"
    assert s["skipped"]["fid"] == why
    assert f"- FID skipped: {why}" in err and f"- FID skipped: {why}" in (out / "table.md").read_text()
    assert len(list((out / "features").glob("*.pt"))) == 1  # its features were kept (a resume may add pairs)


def test_evaluate_resume_refusals_are_named(one_pair_run, tmp_path):
    """Each way an OUT cannot be continued is refused with a line saying why, and nothing is overwritten."""
    done, args, _ = one_pair_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    rows = (out / "samples.jsonl").read_text()

    code, err = _evaluate(*args, "--out", out)  # no --resume: an earlier evaluation is there
    assert code == 2 and f"error: {out} holds an earlier evaluation (samples.jsonl): pass --resume to continue it, " \
                          f"or choose another --out" in err
    code, err = _evaluate(*args, "--out", out, "--resume", "--seed", "1", "--ssim", "skimage-default")
    assert code == 2 and f"error: --resume: {out} was written with other arguments (seed, ssim differ); use " \
                          f"another --out or the same arguments" in err
    assert (out / "samples.jsonl").read_text() == rows

    row = json.loads(rows)
    (out / "samples.jsonl").write_text(json.dumps({**row, "target": row["source"]}) + "\n")  # another pair
    code, err = _evaluate(*args, "--out", out, "--resume")
    assert code == 2 and f"error: --resume: {out / 'samples.jsonl'} line 1 is not pair 0 of this protocol" in err

    (out / "samples.jsonl").write_text(rows)
    (out / "features" / "00000000.pt").unlink()  # the row is there, its FID features are not
    code, err = _evaluate(*args, "--out", out, "--resume")
    assert code == 2 and f"error: --resume: {out / 'features'} does not hold the features of the 1 finished " \
                          f"pairs" in err

    shutil.copy(done / "features" / "00000000.pt", out / "features")
    code, err = _evaluate(*args, "--out", out, "--resume")  # all is in order: nothing left to render
    assert code == 0 and "resuming after 1 of 1 pairs" in err, err
    assert _rows(out) == _rows(done)


def test_videos_as_data_need_the_faces_extra(tiny_setup, tmp_path, monkeypatch):  # noqa: F811
    from oneshot.face3d import detect

    def missing():
        raise detect.FacesUnavailableError(detect.EXTRA_HINT + " (import failed: ModuleNotFoundError)")

    monkeypatch.setattr(detect, "_solutions", missing)
    root, _, _ = tiny_setup
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 64)  # never opened: the front end is checked first
    code, err = _evaluate("--checkpoint", root / "avatar.safetensors", "--data", clip, "--protocol", "self",
                          "--no-sr", "--out", tmp_path / "out")
    assert code == 2
    assert ("error: --data: videos and images are prepared with the face front end (the face front end needs the "
            "optional MediaPipe models: pip install 'oneshot-avatar[faces]'") in err
    assert "or give a dataset directory (oneshot data prepare / synth)" in err
    assert not (tmp_path / "out" / "data").exists()
    # a dataset directory needs no front end
    code, err = _evaluate("--checkpoint", root / "avatar.safetensors", "--data", root / "data", "--protocol",
                          "reconstruction", "--no-sr", "--limit", "1", "--out", tmp_path / "ds")
    assert code == 0, err
    assert "AED skipped: needs the face front end: pip install 'oneshot-avatar[faces]'" in err
