"""Faults and hostile inputs: concurrent writers, kills, bad numbers, empty images, disk full (docs/reliability.md)."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import typer
from cli_helpers import one_error, run_cli

from microdeblur import engine, inference
from microdeblur import prepare as prep
from microdeblur import simulate as sim
from microdeblur import weights as wmod
from microdeblur.atomic import Outputs, StagedFolder, atomic_path, remove_stale_temps, temp_path
from microdeblur.calibration import fit_calibration
from microdeblur.cli import app
from microdeblur.errors import UserError
from microdeblur.image_read import read_image, read_info
from microdeblur.image_write import StackWriter, write_tiff
from microdeblur.interrupts import raise_on_sigterm
from microdeblur.networks import DisentangledAE, ModelConfig
from microdeblur.weights import WeightsMeta, save_weights

REPO = Path(__file__).resolve().parents[1]


def _tiny_model() -> DisentangledAE:
    torch.manual_seed(0)
    return DisentangledAE(ModelConfig(widths=(4, 8, 8), id_channels=(2, 3, 4))).eval()


def _meta(model: DisentangledAE) -> WeightsMeta:
    dz = np.linspace(-20, 20, 41)
    return WeightsMeta(variant="manifold-1d", config=model.config, focus_blur_code=np.array([0.1], np.float32),
                       calibration=fit_calibration(0.05 * dz, dz))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    model = _tiny_model()
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(path, model, _meta(model))
    return path


def _texture(shape, seed=0, dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 3000 + 500).astype(dtype)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob(".*"))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------- the file and folder primitives


def test_temp_names_carry_the_pid_and_only_dead_writers_temps_are_removed(tmp_path: Path):
    tmp = temp_path(tmp_path / "out.tif")
    assert tmp.name.startswith(f".out.{os.getpid()}.") and tmp.name.endswith(".tmp.tif")
    dead, tag = _dead_pid(), tmp.name.split(".")[3][:4]
    stale = tmp_path / f".a.{dead}.{tag}abcdef.tmp.tif"
    stale_dir = tmp_path / f".staging.{dead}.{tag}abcdef.tmp"
    live = tmp_path / f".b.{os.getpid()}.{tag}abcdef.tmp.tif"
    other_host = tmp_path / f".c.{dead}.{'0000' if tag != '0000' else '1111'}abcdef.tmp.tif"
    old_scheme = tmp_path / ".d.1a2b3c4d.tmp.tif"  # names of earlier versions carry no PID: left alone
    for p in (stale, live, other_host, old_scheme):
        p.write_bytes(b"x")
    stale_dir.mkdir()
    (stale_dir / "day01").mkdir()
    write_tiff(tmp_path / "new.tif", np.zeros((4, 4), np.uint8), "YX")  # any write into the folder cleans it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name, old_scheme.name,
                                                                 "new.tif"])


def test_a_set_aside_entry_of_a_killed_replacement_is_put_back(tmp_path: Path):
    dead, tag = _dead_pid(), temp_path(tmp_path / "x").name.split(".")[3][:4]
    (tmp_path / f".day01.{dead}.{tag}abcdef.old").mkdir()  # killed between setting day01 aside and moving in
    (tmp_path / f".day01.{dead}.{tag}abcdef.old" / "plane.tif").write_text("old")
    (tmp_path / "day02").mkdir()
    (tmp_path / f".day02.{dead}.{tag}abcdef.old").mkdir()  # killed after the move: the replacement is there
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day01", "day02"]
    assert (tmp_path / "day01" / "plane.tif").read_text() == "old"


def _competitor(final: Path):
    """Another process creating `final` while this one is still writing."""
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_bytes(b"theirs")


def test_a_name_created_meanwhile_is_never_replaced_by_any_writer(tmp_path: Path, monkeypatch):
    with pytest.raises(UserError, match=r"bytes.bin: already exists \(use --overwrite"):
        with atomic_path(tmp_path / "bytes.bin") as tmp:
            tmp.write_bytes(b"mine")
            _competitor(tmp_path / "bytes.bin")
    with pytest.raises(UserError, match="stack.tif: already exists"):
        with StackWriter(tmp_path / "stack.tif", (2, 8, 8), np.uint16, "ZYX") as w:
            w.write(np.ones((8, 8)))
            w.write(np.ones((8, 8)))
            _competitor(tmp_path / "stack.tif")
    real_imwrite = tifffile.imwrite
    monkeypatch.setattr(tifffile, "imwrite", lambda f, *a, **k: (real_imwrite(f, *a, **k),
                                                                 _competitor(tmp_path / "plane.tif")))
    with pytest.raises(UserError, match="plane.tif: already exists"):
        write_tiff(tmp_path / "plane.tif", np.zeros((8, 8), np.uint16), "YX")
    import safetensors.torch as st

    real_save = st.save_file
    monkeypatch.setattr(st, "save_file", lambda t, f, **k: (real_save(t, f, **k), _competitor(tmp_path / "w.st")))
    model = _tiny_model()
    with pytest.raises(UserError, match="w.st: already exists"):
        save_weights(tmp_path / "w.st", model, _meta(model))
    for name in ("bytes.bin", "stack.tif", "plane.tif", "w.st"):
        assert (tmp_path / name).read_bytes() == b"theirs", name
    assert _hidden(tmp_path) == []


def test_a_day_folder_created_meanwhile_is_never_replaced(tmp_path: Path, monkeypatch):
    out = tmp_path / "sim"
    real_day = sim.simulate_day

    def racing_day(folder, name, **kw):
        real_day(folder, name, **kw)
        (out / name).mkdir(exist_ok=True)
        (out / name / "theirs.txt").write_text("theirs")

    monkeypatch.setattr(sim, "simulate_day", racing_day)
    one_error(run_cli("simulate", out, "--planes", "2", "--size", "128x128"), "day01: already exists")
    assert sorted(p.name for p in out.rglob("*")) == ["day01", "theirs.txt"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _commit_three(kind: str, target: Path) -> None:
    """Write a.txt, b.txt (replacing the old one) and c.txt through the folder or the file primitive."""
    if kind == "folder":
        with StagedFolder(target, overwrite=True) as st:
            for name in ("a.txt", "b.txt", "c.txt"):
                st.path(name).write_text(f"new {name[0]}")
    else:
        with Outputs(overwrite=True) as outs:
            for name in ("a.txt", "b.txt", "c.txt"):
                outs.add(target / name).tmp.write_text(f"new {name[0]}")


@pytest.mark.parametrize("kind", ["folder", "files"])
@pytest.mark.parametrize("fault", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()])
def test_a_commit_failing_at_any_step_leaves_the_old_outputs_or_none(tmp_path: Path, monkeypatch, kind, fault):
    """Each link/rename/replace of a commit moving 3 entries (one replacing an old one) fails in turn."""
    calls = {"n": 0, "fail_at": 0}
    real = {name: getattr(os, name) for name in ("link", "rename", "replace")}

    def counted(name):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise fault
            return real[name](*args, **kwargs)
        return call

    new = {"a.txt": b"new a", "b.txt": b"new b", "c.txt": b"new c"}
    n_calls = None
    for fail_at in range(0, 40):
        target = tmp_path / f"run{fail_at}"
        target.mkdir()
        (target / "b.txt").write_text("old b")
        before = _files(target)
        calls.update(n=0, fail_at=fail_at)
        for name in real:
            monkeypatch.setattr(os, name, counted(name))
        try:
            _commit_three(kind, target)
            failed = False
        except (OSError, UserError, KeyboardInterrupt):
            failed = True
        finally:
            monkeypatch.undo()
        n_calls = calls["n"] if fail_at == 0 else n_calls
        assert _files(target) == (before if failed else new), (fail_at, _files(target))
        assert _hidden(target) == [], fail_at
        if fail_at >= n_calls:
            break
    assert n_calls >= 4  # a link per new entry, a link (set aside) and a replace for the replaced one


# ---------------------------------------------------------------- real processes: races and kills

_CHILD = r"""
import os, signal, sys, time
from pathlib import Path
import microdeblur.image_write as mdio
signal.signal(signal.SIGINT, signal.default_int_handler)  # even when the test runner ignores Ctrl-C
slow, barrier = float(os.environ.get("MD_SLOW", "0")), os.environ.get("MD_BARRIER")
if slow:
    write = mdio.StackWriter.write
    mdio.StackWriter.write = lambda self, plane: (time.sleep(slow), write(self, plane))[1]
if barrier:  # both processes reach the final move before either makes it
    def wait(dst):
        if Path(dst).name == os.environ["MD_FINAL"]:
            Path(barrier, str(os.getpid())).touch()
            t = time.time()
            while len(os.listdir(barrier)) < 2 and time.time() - t < 60:
                time.sleep(0.01)
    for name in ("link", "replace"):
        real = getattr(os, name)
        setattr(os, name, lambda s, d, _real=real, **k: (wait(d), _real(s, d, **k))[1])
from microdeblur.cli import run
sys.argv = ["microdeblur", *sys.argv[1:]]
run()
"""


def _start(args, **env) -> subprocess.Popen:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000", **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen([sys.executable, "-c", _CHILD, *map(str, args)], env=full, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_temp(folder: Path, proc: subprocess.Popen, timeout: float = 60) -> Path:
    t = time.time()
    while time.time() - t < timeout and proc.poll() is None:
        found = [p for p in folder.glob(".*.tmp.tif")] if folder.is_dir() else []
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no temp file appeared; output: {proc.communicate()[0]}")


def test_two_processes_writing_one_output_exactly_one_wins(tmp_path: Path, weights: Path):
    a, b = write_tiff(tmp_path / "a.tif", _texture((40, 50), 1), "YX"), write_tiff(tmp_path / "b.tif",
                                                                                    _texture((40, 50), 2), "YX")
    (tmp_path / "barrier").mkdir()
    out = tmp_path / "out" / "o.tif"
    procs = [_start(["deblur", src, "-o", out, "-w", weights, "--device", "cpu"], MD_BARRIER=tmp_path / "barrier",
                    MD_FINAL="o.tif") for src in (a, b)]
    results = [(p.wait(timeout=120), p.communicate()[0]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], results
    loser = next(text for rc, text in results if rc == 1)
    assert loser.strip().splitlines()[-1].startswith("error:") and "already exists (use --overwrite" in loser
    winner = [a, b][[rc for rc, _ in results].index(0)]
    expected = tmp_path / "expected.tif"
    assert run_cli("deblur", winner, "-o", expected, "-w", weights, "--device", "cpu").exit_code == 0
    assert np.array_equal(read_image(out).data, read_image(expected).data)
    assert _hidden(tmp_path / "out") == []


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_during_a_stack_write_clean_up(tmp_path: Path, weights: Path, signum, code):
    src = write_tiff(tmp_path / "s.tif", _texture((40, 48, 48)), "ZYX")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.tif").write_bytes(b"other output")
    proc = _start(["deblur", src, "-o", out / "s.tif", "-w", weights, "--device", "cpu"], MD_SLOW=0.05)
    _wait_for_temp(out, proc)
    proc.send_signal(signum)
    text = proc.communicate(timeout=60)[0]
    assert proc.returncode == code, text
    assert text.strip().splitlines()[-1] == "error: interrupted"
    assert sorted(p.name for p in out.iterdir()) == ["keep.tif"]


def test_sigkill_leaves_a_temp_file_that_the_next_run_removes(tmp_path: Path, weights: Path):
    src = write_tiff(tmp_path / "s.tif", _texture((40, 48, 48)), "ZYX")
    out = tmp_path / "out"
    proc = _start(["deblur", src, "-o", out / "s.tif", "-w", weights, "--device", "cpu"], MD_SLOW=0.05)
    temp = _wait_for_temp(out, proc)
    proc.kill()
    proc.wait(timeout=60)
    assert temp.exists() and f".{proc.pid}." in temp.name and not (out / "s.tif").exists()
    again = _start(["deblur", src, "-o", out / "s.tif", "-w", weights, "--device", "cpu"])
    assert again.wait(timeout=120) == 0, again.communicate()[0]
    assert sorted(p.name for p in out.iterdir()) == ["s.tif"]


def test_signals_during_a_commit_wait_for_it_then_undo_it(tmp_path: Path, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    raise_on_sigterm()
    try:
        real_link = os.link

        def link_and_get_terminated(src, dst, **kw):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the commit
            return real_link(src, dst, **kw)

        monkeypatch.setattr(os, "link", link_and_get_terminated)
        with pytest.raises(KeyboardInterrupt) as e:
            with Outputs() as outs:
                for name in ("a.txt", "b.txt"):
                    outs.add(tmp_path / name).tmp.write_text(name)
        assert getattr(e.value, "exit_code", None) == 143
        assert list(tmp_path.iterdir()) == []
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("command", ["deblur", "focus", "interpolate"])
def test_ctrl_c_after_the_last_commit_leaves_a_finished_run(tmp_path: Path, weights: Path, monkeypatch, command):
    """An interrupt after every output is in place exits 0 (the outputs are complete); one before the commit
    exits 130 and leaves none."""
    from microdeblur import log, optics

    src = write_tiff(tmp_path / "in.tif", _texture((40, 50)), "YX")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(optics.OpticsRun, "report", interrupt)  # runs just after the commit
    extra = ["--dz-from", "-4", "--dz-to", "4", "--steps", "3"] if command == "interpolate" else []
    res = run_cli(command, src, "-o", tmp_path / "late.tif", "-w", weights, *extra)
    assert res.exit_code == 0 and "error" not in res.output and (tmp_path / "late.tif").is_file(), res.output
    monkeypatch.setattr(log, "progress", interrupt)  # before anything is written
    res = run_cli(command, src, "-o", tmp_path / "early.tif", "-w", weights, *extra)
    assert res.exit_code == 130 and "error: interrupted" in res.output and not (tmp_path / "early.tif").exists()


def test_two_prepares_adding_days_to_one_folder_keep_both(tmp_path: Path, monkeypatch):
    from test_prepare import bf_stack, write_day

    raw = [write_day(tmp_path / name, bf_stack(3, 1, shape=(32, 32), seed=i), focus=1)
           for i, name in enumerate(("a", "b"))]
    barrier, real_dumps = threading.Barrier(2, timeout=2), json.dumps

    def meet_then_dump(obj, *args, **kwargs):  # both runs computed their index before either writes it
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(prep.json, "dumps", meet_then_dump)
    errors = []

    def run_one(day: Path) -> None:
        try:
            prep.prepare_days([day], tmp_path / "data", focus_plane=None, scale=1.0, tile=32, z_step_um=None,
                              overwrite=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run_one, args=(day,)) for day in raw]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    monkeypatch.undo()
    assert sorted(prep.load_index(tmp_path / "data")["days"]) == ["a", "b"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["a", "b", "index.json"]


# ---------------------------------------------------------------- bad numbers


@pytest.mark.parametrize("command,option,value", [
    ("deblur", "--dz", "nan"), ("deblur", "--dz", "inf"), ("deblur", "--dz", "-inf"),
    ("deblur", "--scale", "nan"), ("deblur", "--scale", "inf"), ("deblur", "--scale", "0"), ("deblur", "--scale", "9"),
    ("focus", "--scale", "nan"), ("focus", "--scale", "-1"),
    ("interpolate", "--dz-from", "nan"), ("interpolate", "--dz-to", "inf"), ("interpolate", "--scale", "nan"),
    ("deblur", "--overlap", "64"), ("focus", "--overlap", "-1"), ("deblur", "--batch-size", "0"),
    ("interpolate", "--steps", "1"),
])
def test_bad_numbers_of_inference_commands_are_refused(tmp_path: Path, weights: Path, command, option, value):
    src = write_tiff(tmp_path / "in.tif", _texture((40, 50)), "YX")
    extra = ["--dz-from", "0", "--dz-to", "5"] if command == "interpolate" else []
    if option in extra:
        extra[extra.index(option) + 1] = value
    else:
        extra += [option, value]
    out = tmp_path / "out.tif"
    one_error(run_cli(command, src, "-o", out, "-w", weights, "--device", "cpu", *extra), option)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


@pytest.mark.parametrize("command,option,value", [
    ("simulate", "--z-step", "nan"), ("simulate", "--z-step", "inf"), ("simulate", "--z-step", "-1"),
    ("prepare", "--z-step", "nan"), ("prepare", "--z-step", "inf"), ("prepare", "--scale", "inf"),
    ("prepare", "--scale", "nan"), ("prepare", "--scale", "9"),
])
def test_bad_numbers_of_simulate_and_prepare_are_refused(tmp_path: Path, command, option, value):
    from test_prepare import bf_stack, write_day

    args = [tmp_path / "out", "--planes", "2", "--size", "128x128"] if command == "simulate" else [
        write_day(tmp_path / "day", bf_stack(3, 1, shape=(32, 32)), focus=1), tmp_path / "out", "--tile", "32",
        "--scale", "1"]
    one_error(run_cli(command, *args, option, value), option)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- no signal, no confident number


@pytest.mark.parametrize("image", [np.zeros((64, 64), np.uint16), np.full((1, 1), 700, np.uint16),
                                   np.full((200, 300), 1234.5, np.float32), _texture((1, 300)), _texture((10, 10))],
                         ids=["zeros", "1x1", "flat", "one row", "10x10"])
def test_focus_on_an_image_without_contrast_reports_no_number(tmp_path: Path, weights: Path, image):
    src = write_tiff(tmp_path / "in.tif", image, "YX")
    res = run_cli("focus", src, "-o", tmp_path / "m.tif", "--csv", tmp_path / "s.csv", "-w", weights, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "no tile has enough contrast, or the image is under 32 px a side" in res.output
    assert np.isnan(read_image(tmp_path / "m.tif").data).all()
    row = next(csv.DictReader(open(tmp_path / "s.csv")))
    assert row["median_dz_um"] == "nan" and row["frac_in_focus"] == "nan" and row["n_tiles_used"] == "0"


def test_focus_median_leaves_out_empty_tiles(tmp_path: Path, weights: Path):
    img = np.full((128, 384), 2000.0, np.float32)
    img[:, 256:] = _texture((128, 128), 3)  # one textured tile on the right, two empty ones
    model, meta = wmod.load_weights(weights)
    db = engine.Deblurrer(model, meta, overlap=0)
    dmap, summary = db.focus_map(img)
    assert np.isnan(dmap[:, :256]).all() and np.isfinite(dmap[:, 256:]).all()  # NaN where an empty tile is nearest
    assert summary["median_dz_um"] == pytest.approx(float(np.median(dmap[:, 256:])))
    assert summary["n_tiles"] == 3 and summary["n_tiles_used"] == 1


# ---------------------------------------------------------------- OME in, OME out; no invented pixel size


def test_ome_input_gives_ome_output_with_physical_sizes(tmp_path: Path, weights: Path):
    src = tmp_path / "in.ome.tif"
    tifffile.imwrite(src, _texture((3, 40, 50)), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 250,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.5, "PhysicalSizeZUnit": "µm"})
    for cmd, out in (("deblur", tmp_path / "out.ome.tif"), ("deblur", tmp_path / "out.tif"),
                     ("focus", tmp_path / "map.tif")):
        assert run_cli(cmd, src, "-o", out, "-w", weights, "--device", "cpu").exit_code == 0
        with tifffile.TiffFile(out) as tif:
            assert tif.is_ome and not tif.is_imagej, out
            pixels = tif.ome_metadata.split("<Pixels", 1)[1].split(">", 1)[0]
        for attr in ('PhysicalSizeX="0.25"', 'PhysicalSizeY="0.25"', 'PhysicalSizeZ="0.5"', 'PhysicalSizeXUnit="µm"',
                     'PhysicalSizeZUnit="µm"'):
            assert attr in pixels, (out, pixels)
        info = read_info(out)
        assert (info.pixel_size_um, info.z_step_um, info.shape) == (0.25, 0.5, (3, 40, 50))


def test_no_pixel_size_in_means_no_pixel_size_out(tmp_path: Path, weights: Path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, _texture((40, 50)))
    ome = tmp_path / "plain.ome.tif"
    tifffile.imwrite(ome, _texture((40, 50)), ome=True, metadata={"axes": "YX"})
    for src in (plain, ome):
        out = tmp_path / f"out_{src.name}"
        assert run_cli("deblur", src, "-o", out, "-w", weights, "--device", "cpu").exit_code == 0
        with tifffile.TiffFile(out) as tif:
            if tif.is_ome:
                assert "PhysicalSize" not in tif.ome_metadata
            else:
                assert tif.is_imagej and "unit" not in tif.imagej_metadata  # ImageJ: uncalibrated, not 1 µm
        assert read_info(out).pixel_size_um is None


# ---------------------------------------------------------------- honest messages, dtypes and options


def test_unwritable_output_folder_names_the_users_path(tmp_path: Path, weights: Path, monkeypatch):
    src = write_tiff(tmp_path / "in.tif", _texture((40, 50)), "YX")
    real_memmap = tifffile.memmap

    def denied(path, *args, **kwargs):  # what opening a file in a read-only folder raises
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(tifffile, "memmap", denied)
    line = one_error(run_cli("deblur", src, "-o", tmp_path / "ro" / "o.tif", "-w", weights), "Permission denied",
                      str(tmp_path / "ro" / "o.tif"))
    assert ".tmp" not in line
    monkeypatch.setattr(tifffile, "memmap", real_memmap)
    if os.geteuid() != 0:  # root writes anywhere: only the injected case runs there
        ro = tmp_path / "real_ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            line = one_error(run_cli("deblur", src, "-o", ro / "o.tif", "-w", weights), str(ro / "o.tif"))
            assert ".tmp" not in line
        finally:
            ro.chmod(0o755)


def test_disk_full_names_the_output_keeps_the_old_one_and_leaves_no_temp(tmp_path: Path, weights: Path,
                                                                          monkeypatch):
    src = write_tiff(tmp_path / "in.tif", _texture((3, 40, 50)), "ZYX")
    out = tmp_path / "out" / "o.tif"
    out.parent.mkdir()
    out.write_bytes(b"previous result")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    one_error(run_cli("deblur", src, "-o", out, "-w", weights, "--overwrite"), f"{out}: cannot write",
               "No space left on device")
    a = write_tiff(tmp_path / "a.tif", _texture((40, 50)), "YX")
    real_imwrite = tifffile.imwrite

    def full_after_header(f, *args, **kwargs):
        real_imwrite(f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full_after_header)
    one_error(run_cli("interpolate", a, "-o", out,
                    "--dz-from", "0", "--dz-to", "2", "--steps", "2", "-w", weights, "--overwrite"),
               f"{out}: cannot write (No space left on device)")
    assert out.read_bytes() == b"previous result" and _hidden(tmp_path / "out") == []


@pytest.mark.parametrize("content", [b"this is not a tiff", "truncated", "bad header"])
def test_corrupt_file_messages_hold_no_python_reprs(tmp_path: Path, content):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, _texture((5, 40, 50)), imagej=True, metadata={"axes": "ZYX"})
    data = good.read_bytes()
    bad = tmp_path / "bad.tif"
    bad.write_bytes({"truncated": data[: len(data) // 2], "bad header": data[:300]}.get(content, content))
    with pytest.raises(UserError) as e:
        read_image(bad)
    text = str(e.value)
    assert "b'" not in text and "<" not in text and "(" in text and str(bad) in text, text


def test_float64_input_keeps_float64(tmp_path: Path, weights: Path, monkeypatch):
    monkeypatch.setattr(engine.Deblurrer, "encode_tiles", lambda self, t: (t.reshape(len(t), -1),
                                                                              np.zeros((len(t), 1), np.float32)))
    monkeypatch.setattr(engine.Deblurrer, "decode_tiles",
                        lambda self, i, b: i.reshape(-1, 1, self.tile, self.tile))
    data = np.random.default_rng(0).random((40, 50)) * 1e-3 + 1.0
    src = tmp_path / "f64.tif"
    tifffile.imwrite(src, data)
    out = inference.deblur_paths([str(src)], tmp_path / "o.tif", weights=weights, device="cpu")[0]
    img = read_image(out)
    assert img.dtype == np.float64 and np.allclose(img.data, data, rtol=1e-6)


def _click_commands():
    return typer.main.get_command(app).commands


def test_every_option_of_focus_and_interpolate_has_help_and_flags_show_no_metavar():
    for name in ("focus", "interpolate"):
        for p in _click_commands()[name].params:
            assert p.help, (name, p.name)
    for name in ("", *_click_commands()):
        res = run_cli(*([name] if name else []), "--help")
        assert res.exit_code == 0 and "<bool>" not in res.output, name


def test_quiet_and_verbose_work_after_the_command(tmp_path: Path, weights: Path):
    src = write_tiff(tmp_path / "in.tif", _texture((40, 50)), "YX")
    quiet = run_cli("deblur", src, "-o", tmp_path / "q.tif", "-w", weights, "--device", "cpu", "-q")
    assert quiet.exit_code == 0 and quiet.output.strip() == "", quiet.output
    verbose = run_cli("deblur", src, "-o", tmp_path / "v.tif", "-w", weights, "--device", "cpu", "--verbose")
    assert verbose.exit_code == 0 and "plane 1/1" in verbose.output, verbose.output
    one_error(run_cli("deblur", tmp_path / "missing.tif", "-o", tmp_path / "x.tif", "-q"), "missing.tif")


def test_cli_verbosity_does_not_leak_into_the_calling_process(tmp_path):
    """`-q` before the command sets the level for that invocation only (Python callers keep theirs)."""
    from microdeblur import log

    with log.at_level(1):
        res = run_cli("-q", "simulate", tmp_path / "raw", "--days", "1", "--planes", "1", "--size", "128x128")
        assert res.exit_code == 0, res.output
        assert log.verbosity() == 1
