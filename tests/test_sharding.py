"""Sharded batch runs: --shard I/N, --skip-existing, --manifest, failures recorded, read-ahead thread."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from microdeblur import engine
from microdeblur.calibration import fit_calibration
from microdeblur.cli import app
from microdeblur.errors import UserError
from microdeblur.focus_runs import focus_paths
from microdeblur.image_read import read_image
from microdeblur.inference import deblur_paths
from microdeblur.inputs import Shard, parse_shard, prefetch, shard_indices
from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.weights import WeightsMeta, save_weights

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = DisentangledAE(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4))).eval()
    dz = np.linspace(-20, 20, 41)
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_weights(path, model, WeightsMeta(variant="manifold-1d", config=model.config, scale=1.0,
                                          focus_blur_code=np.array([0.1], np.float32),
                                          calibration=fit_calibration(0.05 * dz, dz)))
    return path


def _inputs(folder: Path, n: int = 7) -> list[Path]:
    """n small uint16 inputs (2-plane stacks and 2-D images) with different sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        shape = (2, 100 + 7 * i, 130) if i % 2 else (120, 90 + 5 * i)
        data = (rng.random(shape) * 50000 + 1000).astype(np.uint16)
        p = folder / f"img{i}.tif"
        tifffile.imwrite(p, data, imagej=True, metadata={"axes": "ZYX" if len(shape) == 3 else "YX"})
        paths.append(p)
    return paths


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- the split itself


@pytest.mark.parametrize("n_inputs", [1, 2, 7, 10])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 8])
def test_shards_cover_every_input_exactly_once_in_any_order(n_inputs, n_shards):
    names = [f"/data/f{i}.tif" for i in range(n_inputs)]
    shuffled = list(np.random.default_rng(n_inputs).permutation(names))
    picked = []
    for i in range(n_shards):
        a = [names[j] for j in shard_indices(names, Shard(i, n_shards))]
        b = [shuffled[j] for j in shard_indices(shuffled, Shard(i, n_shards))]
        assert sorted(a) == sorted(b)  # the argument order does not matter
        picked += a
    assert sorted(picked) == sorted(names)


def test_names_equal_in_natural_order_are_split_alike_in_any_order():
    names = ["/d/t1.tif", "/d/t01.tif", "/d/A.tif", "/d/a.tif"]  # natural order ties: t1 = t01, A = a
    for order in (names, names[::-1]):
        assert [[order[j] for j in shard_indices(order, Shard(i, 2))] for i in range(2)] in (
            [["/d/A.tif", "/d/t01.tif"], ["/d/a.tif", "/d/t1.tif"]], [["/d/t01.tif", "/d/A.tif"], ["/d/t1.tif", "/d/a.tif"]])


def test_one_file_named_twice_is_one_input(tmp_path, weights):
    src = _inputs(tmp_path / "in", 2)
    (tmp_path / "in" / "link.tif").symlink_to(src[1].name)
    twice = [str(src[0]), str(tmp_path / "in" / ".." / "in" / src[0].name), str(tmp_path / "in")]
    outs = deblur_paths(twice, str(tmp_path / "out") + "/", weights=weights, device="cpu")  # before: "rename one"
    assert sorted(p.name for p in outs) == ["img0.tif", "img1.tif"]  # the link is img1 again: one output
    for i in range(2):  # and the shards agree with the whole run
        deblur_paths(twice, str(tmp_path / "sh") + "/", weights=weights, device="cpu", shard=f"{i}/2")
    assert sorted(p.name for p in (tmp_path / "sh").iterdir()) == ["img0.tif", "img1.tif"]


def test_an_output_folder_the_inputs_also_match_gives_every_job_the_same_list(tmp_path, weights):
    _inputs(tmp_path / "in", 3)
    args = ("focus", tmp_path / "in", "-o", str(tmp_path / "in") + "/", "-w", weights, "--device", "cpu",
            "--skip-existing")
    first, again = _cli(*args), _cli(*args)  # the rerun finds in/img0_dz.tif ... among the inputs
    assert first.exit_code == 0 and again.exit_code == 0, again.output  # before: "refusing to overwrite an input"
    assert "are outputs of the other inputs and are left out" in again.output
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        "img0.tif", "img0_dz.tif", "img1.tif", "img1_dz.tif", "img2.tif", "img2_dz.tif"]  # no img0_dz_dz.tif


def test_shards_drop_duplicates_by_real_path(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    paths = [tmp_path / "a.tif", tmp_path / "." / "a.tif", tmp_path / "sub" / ".." / "a.tif"]
    (tmp_path / "sub").mkdir()
    assert shard_indices(paths, Shard(0, 1)) == [0]


@pytest.mark.parametrize("text", ["0/0", "3/2", "2/2", "a/b", "-1/2", "1/-2", "1", "1/2/3", "", "1.5/2"])
def test_bad_shard_values_are_one_clear_error(text):
    with pytest.raises(UserError) as e:
        parse_shard(text)
    assert "--shard" in str(e.value)


def test_good_shard_values():
    assert parse_shard("0/1") == Shard(0, 1)
    assert parse_shard(" 3 / 4 ") == Shard(3, 4)


@pytest.mark.parametrize("text", ["0/0", "3/2", "a/b", "-1/2"])
def test_bad_shard_on_the_command_line(tmp_path, weights, text):
    src = _inputs(tmp_path / "in", 2)
    res = _cli("deblur", *src, "-o", tmp_path / "out/", "-w", weights, "--device", "cpu", "--shard", text)
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --shard"), res.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- sharded runs = one run


def test_three_shards_write_exactly_the_outputs_of_one_run(tmp_path, weights):
    src = _inputs(tmp_path / "in")
    whole = deblur_paths([str(tmp_path / "in")], str(tmp_path / "whole") + "/", weights=weights, device="cpu")
    assert len(whole) == 7
    orders = [src, src[::-1], src[3:] + src[:3]]  # each job may list the inputs in another order
    for i, order in enumerate(orders):
        deblur_paths([str(p) for p in order], str(tmp_path / "sharded") + "/", weights=weights, device="cpu",
                     shard=f"{i}/3", manifest=tmp_path / f"m{i}.csv")
    names = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert names == sorted(p.name for p in whole)
    for p in whole:
        assert (tmp_path / "sharded" / p.name).read_bytes() == p.read_bytes()  # bit for bit
    rows = [r for i in range(3) for r in _rows(tmp_path / f"m{i}.csv")]
    assert sorted(Path(r["input"]).name for r in rows) == sorted(p.name for p in src)  # each input once
    assert {r["status"] for r in rows} == {"written"} and all(float(r["seconds"]) >= 0 for r in rows)


def test_skip_existing_rerun_writes_nothing_new(tmp_path, weights):
    _inputs(tmp_path / "in")
    out = str(tmp_path / "out") + "/"
    for i in range(3):
        deblur_paths([str(tmp_path / "in")], out, weights=weights, device="cpu", shard=f"{i}/3")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "out").iterdir()}
    for i in range(3):
        res = _cli("deblur", tmp_path / "in", "-o", out, "-w", weights, "--device", "cpu", "--shard", f"{i}/3",
                   "--skip-existing", "--manifest", tmp_path / f"m{i}.csv")
        assert res.exit_code == 0, res.output
        assert {r["status"] for r in _rows(tmp_path / f"m{i}.csv")} == {"skipped"}
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "out").iterdir()}
    assert after == before


def test_skip_existing_finishes_what_a_failed_run_left(tmp_path, weights):
    src = _inputs(tmp_path / "in", 4)
    out = tmp_path / "out"
    deblur_paths([str(p) for p in src[:2]], str(out) + "/", weights=weights, device="cpu")
    deblur_paths([str(tmp_path / "in")], str(out) + "/", weights=weights, device="cpu", skip_existing=True,
                 manifest=tmp_path / "m.csv")
    status = {Path(r["input"]).name: r["status"] for r in _rows(tmp_path / "m.csv")}
    assert status == {"img0.tif": "skipped", "img1.tif": "skipped", "img2.tif": "written", "img3.tif": "written"}
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in src]


def test_skip_existing_and_overwrite_are_refused_together(tmp_path, weights):
    _inputs(tmp_path / "in", 2)
    res = _cli("deblur", tmp_path / "in", "-o", tmp_path / "out/", "-w", weights, "--skip-existing", "--overwrite")
    assert res.exit_code == 1 and "cannot be combined" in res.output


def test_without_skip_existing_an_existing_output_is_refused_up_front(tmp_path, weights):
    _inputs(tmp_path / "in", 3)
    out = str(tmp_path / "out") + "/"
    deblur_paths([str(tmp_path / "in")], out, weights=weights, device="cpu", shard="0/2")
    with pytest.raises(UserError, match="already exists"):
        deblur_paths([str(tmp_path / "in")], out, weights=weights, device="cpu", shard="0/2")


def test_a_shard_with_nothing_to_do_says_so_and_exits_0(tmp_path, weights):
    src = _inputs(tmp_path / "in", 1)
    res = _cli("deblur", src[0], "-o", tmp_path / "one.tif", "-w", weights, "--device", "cpu", "--shard", "1/2",
               "--manifest", tmp_path / "m1.csv")
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.output
    assert not (tmp_path / "one.tif").exists() and _rows(tmp_path / "m1.csv") == []
    res = _cli("deblur", src[0], "-o", tmp_path / "one.tif", "-w", weights, "--device", "cpu", "--shard", "0/2")
    assert res.exit_code == 0, res.output
    assert read_image(tmp_path / "one.tif").shape == read_image(src[0]).shape  # one input: the output is that file


# ---------------------------------------------------------------- failures, manifest, interruption


def test_a_failing_input_is_recorded_and_the_others_are_written(tmp_path, weights):
    src = _inputs(tmp_path / "in", 4)
    src[1].write_bytes(src[1].read_bytes()[:300])  # truncated TIFF
    res = _cli("deblur", tmp_path / "in", "-o", tmp_path / "out/", "-w", weights, "--device", "cpu",
               "--manifest", tmp_path / "m.csv")
    assert res.exit_code == 1
    assert "1 of 4 input(s) failed (img1.tif)" in res.output
    status = {Path(r["input"]).name: r["status"] for r in _rows(tmp_path / "m.csv")}
    assert status == {"img0.tif": "written", "img1.tif": "failed", "img2.tif": "written", "img3.tif": "written"}
    assert next(r for r in _rows(tmp_path / "m.csv") if r["status"] == "failed")["message"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.tif", "img2.tif", "img3.tif"]


def test_manifest_replaces_a_manifest_but_not_another_file(tmp_path, weights):
    _inputs(tmp_path / "in", 2)
    other = tmp_path / "notes.csv"
    other.write_text("my,own\n1,2\n")
    with pytest.raises(UserError, match="not a manifest"):
        deblur_paths([str(tmp_path / "in")], str(tmp_path / "out") + "/", weights=weights, device="cpu",
                     manifest=other)
    assert other.read_text() == "my,own\n1,2\n" and not (tmp_path / "out").exists()


def test_interrupted_batch_keeps_finished_outputs_and_its_manifest(tmp_path, weights, monkeypatch):
    _inputs(tmp_path / "in", 4)
    calls = {"n": 0}
    real = engine.Deblurrer.deblur_plane

    def stop_on_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(engine.Deblurrer, "deblur_plane", stop_on_third)
    with pytest.raises(KeyboardInterrupt):
        deblur_paths([str(tmp_path / "in")], str(tmp_path / "out") + "/", weights=weights, device="cpu",
                     skip_existing=True, manifest=tmp_path / "m.csv")
    rows = _rows(tmp_path / "m.csv")
    assert [r["status"] for r in rows] == ["written", "failed"] and rows[1]["message"] == "interrupted"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["img0.tif"]  # img1 (a stack) was cut off: no file


# ---------------------------------------------------------------- focus


def test_focus_shards_match_one_run_and_csv_carries_over_skipped_rows(tmp_path, weights):
    _inputs(tmp_path / "in", 5)
    focus_paths([str(tmp_path / "in")], str(tmp_path / "whole") + "/", weights=weights, device="cpu",
                csv=tmp_path / "whole.csv")
    for i in range(2):
        focus_paths([str(tmp_path / "in")], str(tmp_path / "sh") + "/", weights=weights, device="cpu", shard=f"{i}/2",
                    csv=tmp_path / f"s{i}.csv")
    for p in (tmp_path / "whole").iterdir():
        assert (tmp_path / "sh" / p.name).read_bytes() == p.read_bytes()
    whole = _rows(tmp_path / "whole.csv")
    sharded = _rows(tmp_path / "s0.csv") + _rows(tmp_path / "s1.csv")
    key = lambda r: (r["file"], r["plane"])  # noqa: E731
    assert sorted(sharded, key=key) == sorted(whole, key=key)
    # a rerun of shard 0 skips everything and keeps its table whole (rows carried over from the earlier table)
    first = _rows(tmp_path / "s0.csv")
    res = _cli("focus", tmp_path / "in", "-o", str(tmp_path / "sh") + "/", "-w", weights, "--device", "cpu",
               "--shard", "0/2", "--skip-existing", "--csv", tmp_path / "s0.csv")
    assert res.exit_code == 0, res.output
    assert sorted(_rows(tmp_path / "s0.csv"), key=key) == sorted(first, key=key)
    # the same inputs spelled as absolute paths match the earlier rows by real path
    res = _cli("focus", *sorted((tmp_path / "in").resolve().iterdir()), "-o", str(tmp_path / "sh") + "/", "-w",
               weights, "--device", "cpu", "--shard", "0/2", "--skip-existing", "--csv", tmp_path / "s0.csv")
    assert res.exit_code == 0 and "no rows for" not in res.output, res.output
    assert len(_rows(tmp_path / "s0.csv")) == len(first)
    (tmp_path / "s0.csv").unlink()  # no earlier table: the skipped inputs are named
    res = _cli("focus", tmp_path / "in", "-o", str(tmp_path / "sh") + "/", "-w", weights, "--device", "cpu",
               "--shard", "0/2", "--skip-existing", "--csv", tmp_path / "s0.csv")
    assert res.exit_code == 0 and "no rows for 3 skipped input(s)" in res.output, res.output


def test_a_job_stopped_before_its_first_input_leaves_no_stale_manifest(tmp_path, weights, monkeypatch):
    from microdeblur import inference

    _inputs(tmp_path / "in", 2)
    manifest = tmp_path / "m.csv"
    deblur_paths([str(tmp_path / "in")], str(tmp_path / "out") + "/", weights=weights, device="cpu",
                 skip_existing=True, manifest=manifest)
    assert len(_rows(manifest)) == 2

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "load_deblurrer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        deblur_paths([str(tmp_path / "in")], str(tmp_path / "out") + "/", weights=weights, device="cpu",
                     skip_existing=True, manifest=manifest)
    assert manifest.read_text().splitlines() == ["input,output,status,seconds,message"]  # not the first run's rows


# ---------------------------------------------------------------- the read-ahead thread


def test_prefetch_keeps_order_and_raises_the_readers_error():
    def items():
        yield from range(5)
        raise ValueError("bad plane")

    got = []
    with pytest.raises(ValueError, match="bad plane"):
        for x in prefetch(items()):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_prefetch_stops_its_thread_when_the_consumer_stops():
    closed = threading.Event()

    def items():
        try:
            yield from range(1000)
        finally:
            closed.set()

    it = prefetch(items())
    assert next(it) == 0
    it.close()
    assert closed.is_set()
    assert not any(t.name == "microdeblur-reader" for t in threading.enumerate())
