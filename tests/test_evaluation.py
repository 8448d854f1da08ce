"""Evaluation: metrics on known pairs, ML-VAE score sanity, baselines, and `evaluate --quick` end to end."""

from __future__ import annotations

import json
import math
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from skimage.restoration import richardson_lucy, wiener
from typer.testing import CliRunner

from microdeblur import baselines, eval_protocol, evaluation, metrics
from microdeblur.cli import app
from microdeblur.microscope import Optics, defocus_psf

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def _tiles(n: int = 3, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, size, size)).astype(np.float32)


def test_identical_tiles_give_ssim_one_and_capped_psnr():
    t = _tiles()
    assert np.allclose(metrics.ssim_batch(t, t), 1.0)
    assert np.all(metrics.psnr_batch(t, t) == metrics.PSNR_CAP_DB)
    assert metrics.json_safe({"a": float("inf"), "b": [np.float32(2.0), float("nan")]}) == {"a": None, "b": [2.0, None]}


def test_psnr_of_known_gaussian_noise():
    rng = np.random.default_rng(1)
    clean = np.full((4, 256, 256), 0.5, np.float32)
    sigma = 0.05
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    expected = 10 * math.log10(1.0 / sigma**2)
    assert abs(metrics.psnr_batch(noisy, clean).mean() - expected) < 0.2


def test_ssim_batch_equals_skimage():
    a, b = _tiles(seed=2), _tiles(seed=3)
    b = 0.6 * a + 0.4 * b
    want = [structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b)]
    assert np.allclose(metrics.ssim_batch(a, b), want, atol=1e-6)


def test_bins_and_summary():
    abs_dz = np.array([0.5, 5.0, 5.5, 15.0, 29.0, 31.0])
    assert metrics.bin_index(abs_dz).tolist() == [0, 0, 1, 2, 4, 5]
    s = metrics.deblur_summary(np.ones(6), np.full(6, 20.0), abs_dz)
    assert s["overall"]["n"] == 6 and s["near_focus"]["n"] == 4
    assert set(s["bins"]) == {"0-5", "5-10", "10-15", "20-30", ">30"}


def test_alternate_holdout_takes_every_second_tile_per_identity():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    assert metrics.alternate_holdout(labels).tolist() == [False, True, False, False, True, False, True]


def test_mlvae_score_perfect_and_random_codes():
    rng = np.random.default_rng(0)
    k, per = 20, 10
    labels = np.repeat(np.arange(k), per)
    perfect = np.eye(k)[labels] + 0.05 * rng.standard_normal((k * per, k))
    noise = rng.standard_normal((k * per, 8))
    good = metrics.mlvae_score(perfect, rng.standard_normal((k * per, 1)), labels, epochs=40)
    assert good["acc_identity"] == 1.0 and good["score"] > 0.85
    rand = metrics.mlvae_score(noise, rng.standard_normal((k * per, 8)), labels, epochs=40)
    assert abs(rand["score"]) < 0.15


def test_batched_deconvolution_equals_per_tile_skimage():
    t = _tiles(2, 48)
    psf = defocus_psf(Optics(), 8.0, 0.65, baselines.psf_size(8.0, 0.65, Optics()))
    r = psf.shape[0] // 2
    pad = [np.pad(x, r, mode="reflect") for x in t]
    rl = [richardson_lucy(p, psf, num_iter=4, clip=False)[r:-r, r:-r] for p in pad]
    wi = [wiener(p, psf, baselines.WIENER_BALANCE, clip=False)[r:-r, r:-r] for p in pad]
    assert np.allclose(baselines.richardson_lucy_tiles(t, psf, 4), rl, atol=1e-5)
    assert np.allclose(baselines.wiener_tiles(t, psf), wi, atol=1e-5)


def test_unet_size_and_save_load(tmp_path: Path):
    cfg = baselines.unet_config_for(359_218)
    model = baselines.UNet(cfg).eval()
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 359_218) / 359_218 < 0.1
    path = tmp_path / "unet.safetensors"
    baselines.save_unet(path, model, {"steps": 0})
    loaded, info = baselines.load_unet(path)
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), loaded(x))
    assert info == {"steps": 0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Two simulated days of 7 planes (5 µm apart), prepared into 4 identities of 128-px tiles."""
    from microdeblur.prepare import prepare_days
    from microdeblur.simulate import simulate_days

    root = tmp_path_factory.mktemp("eval")
    simulate_days(root / "raw", days=2, planes=7, size=(512, 384), seed=1, z_step_um=5.0, cells=None, overwrite=False)
    prepare_days(sorted((root / "raw").iterdir()), root / "data", focus_plane=None, scale=0.5, tile=128,
                 z_step_um=None, overwrite=False)
    return root / "data"


def _train_unet(monkeypatch, data: Path, out: Path, steps: int, *extra: str) -> None:
    script = Path(__file__).parents[1] / "benchmarks" / "train_unet.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(data), "-o", str(out), "--steps", str(steps), "--base", "4",
                                      "--batch-size", "2", "--crop", "32", "--save-every", "2", *extra])
    runpy.run_path(str(script), run_name="__main__")


def test_unet_baseline_resumes_step_for_step(prepared: Path, tmp_path: Path, monkeypatch):
    """A U-Net baseline run stopped at step 4 and resumed to 6 ends with the weights of one run straight to 6."""
    _train_unet(monkeypatch, prepared, tmp_path / "straight.safetensors", 6)
    _train_unet(monkeypatch, prepared, tmp_path / "resumed.safetensors", 4)
    _train_unet(monkeypatch, prepared, tmp_path / "resumed.safetensors", 6, "--resume", "--overwrite")
    (a, info_a), (b, info_b) = (baselines.load_unet(tmp_path / f"{n}.safetensors") for n in ("straight", "resumed"))
    assert info_a["steps"] == info_b["steps"] == 6
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    with pytest.raises(SystemExit, match="--resume needs"):
        _train_unet(monkeypatch, prepared, tmp_path / "never.safetensors", 6, "--resume")
    with pytest.raises(SystemExit, match="holds an earlier run"):  # a fresh start never replaces a run's state
        _train_unet(monkeypatch, prepared, tmp_path / "resumed.safetensors", 6)


def _tiny_weights(path: Path, variant: str, seed: int) -> Path:
    from microdeblur.networks import DisentangledAE, ModelConfig
    from microdeblur.weights import WeightsMeta, save_weights

    torch.manual_seed(seed)
    cfg = ModelConfig(variant=variant, widths=(4, 8), id_channels=(2, 3), blur_width=8)
    model = DisentangledAE(cfg).eval()
    code = np.zeros(cfg.blur_dim, np.float32) if variant == "manifold-1d" else np.zeros(0, np.float32)
    save_weights(path, model, WeightsMeta(variant=variant, config=cfg, scale=0.5, z_step_um=5.0, focus_blur_code=code))
    return path


def test_evaluate_quick_end_to_end(prepared: Path, tmp_path: Path):
    w1 = _tiny_weights(tmp_path / "one_d.safetensors", "manifold-1d", 0)
    w2 = _tiny_weights(tmp_path / "full.safetensors", "manifold", 1)
    unet = tmp_path / "unet.safetensors"
    baselines.save_unet(unet, baselines.UNet(baselines.UNetConfig(base=4, depth=2)).eval(), {"steps": 0})
    report = tmp_path / "report"
    args = ["evaluate", str(prepared), "-o", str(report), "-w", str(w1), "-w", str(w2), "--unet", str(unet),
            "--split", "all", "--quick", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    def strict(text: str):
        raise ValueError(f"non-standard JSON constant {text}")

    m = json.loads((report / "metrics.json").read_text(), parse_constant=strict)
    assert m["protocol"]["n_identities"] == 4 and m["protocol"]["quick"]
    assert set(m["reconstruction"]) == {"one_d", "full"}
    methods = set(m["deblurring"])
    assert {"input", "unsharp mask", "Richardson-Lucy", "Wiener", "U-Net", "one_d (reference)", "one_d (stored)",
            "full (reference)"} <= methods and "full (stored)" not in methods
    for res in m["deblurring"].values():
        assert -1 <= res["overall"]["ssim"] <= 1 and set(res["bins"]) == {"0-5", "5-10", "10-15"}
    assert -1 <= m["disentanglement"]["one_d"]["score"] <= 1
    for name in m["figures"]:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"interpolation.png", "blur_codes_one_d.png", "identity_codes_full.png"} <= set(m["figures"])
    text = (report / "report.md").read_text()
    assert "| one_d (reference) |" in text and "![interpolation.png](interpolation.png)" in text
    assert not [p for p in report.iterdir() if p.name.startswith(".")]
    assert m["protocol"]["pixel_um"] == pytest.approx({"day01": 0.65, "day02": 0.65})
    assert m["protocol"]["pixel_um_assumed"] == [] and "from the prepared index" in text

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already holds" in again.output and "--overwrite" in again.output


def test_evaluate_scores_whole_frames(prepared: Path, tmp_path: Path):
    w = _tiny_weights(tmp_path / "one_d.safetensors", "manifold-1d", 0)
    m = evaluation.evaluate(prepared, tmp_path / "report", weights=[w], split="all", quick=True, device="cpu",
                            frames=[prepared.parent / "raw"], frames_dz_max=5.0)
    f = m["frames"]
    assert f["days"] == ["day01", "day02"] and f["bins"] == ["0-2", "2-5"]
    assert list(f["methods"]) == ["input", "unsharp mask", "Richardson-Lucy (5 it.)", "one_d"]
    assert all(res["all"]["n"] == 4 and res["bins"]["2-5"]["n"] == 4 for res in f["methods"].values())  # ±5 um, 2 days
    assert len(f["rows"]) == 16 and "## Whole frames" in (tmp_path / "report" / "report.md").read_text()


def _tile_graph(path: Path, input_name: str = "tiles", dynamic: bool = True) -> Path:
    """A tile-to-tile ONNX graph [N,1,T,T] -> same that returns its input (a stand-in for CAREamics' CARE export)."""
    import torch

    class Same(torch.nn.Module):
        def forward(self, t):
            return t * 1.0

    axes = {input_name: {0: "n"}, "out": {0: "n"}} if dynamic else None
    torch.onnx.export(Same(), (torch.zeros(2, 1, 64, 64),), str(path), input_names=[input_name], output_names=["out"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def test_evaluate_puts_onnx_peers_in_the_whole_frame_table(prepared: Path, tmp_path: Path):
    """`--onnx CARE=FILE` scores a tile-to-tile graph through deblur's tiling beside the input: a graph that returns
    its tiles scores as the input does."""
    graph = _tile_graph(tmp_path / "same.onnx")
    w = _tiny_weights(tmp_path / "one_d.safetensors", "manifold-1d", 0)
    res = CliRunner().invoke(app, ["evaluate", str(prepared), "-o", str(tmp_path / "report"), "-w", str(w), "--split",
                                   "all", "--quick", "--device", "cpu", "--frames", str(prepared.parent / "raw"),
                                   "--frames-dz-max", "5", "--onnx", f"CARE={graph}"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    f = m["frames"]["methods"]
    assert list(f) == ["input", "unsharp mask", "Richardson-Lucy (5 it.)", "CARE", "one_d"]
    from microdeblur import frame_eval
    from microdeblur.dataset import PreparedData

    days, scale = frame_eval.find_frame_days([prepared.parent / "raw"]), PreparedData.load(prepared).scale
    same = frame_eval.score_frames(days, {"same": frame_eval.at_working_scale(lambda x, dz, px: x, scale)}, 5.0)
    expect = frame_eval.summarise(same, 5.0)["methods"]["same"]["all"]["minmse_psnr"]  # resized there and back
    assert f["CARE"]["all"]["minmse_psnr"] == pytest.approx(expect, abs=1e-3)
    assert m["baselines"]["CARE"]["onnx"] == str(graph)


@pytest.mark.parametrize("spec, frames, message", [
    ("CARE", True, "NAME=FILE"), ("=x.onnx", True, "NAME=FILE"), ("CARE=missing.onnx", True, "no such file"),
    ("input={graph}", True, "already taken"), ("CARE={graph}", False, "give --frames"),
    ("CARE={bad}", True, "tile-to-tile"), ("CARE={junk}", True, "not a readable ONNX graph"),
    ("Richardson-Lucy (5 it.)={graph}", True, "already taken"), ("one_d={graph}", True, "also a model's name"),
    ("CARE={fixed}", True, "free batch axis")])
def test_evaluate_refuses_bad_onnx_peers_before_any_work(prepared: Path, tmp_path: Path, spec, frames, message):
    graph, bad = _tile_graph(tmp_path / "same.onnx"), _tile_graph(tmp_path / "bad.onnx", input_name="image")
    fixed = _tile_graph(tmp_path / "fixed.onnx", dynamic=False)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    w = _tiny_weights(tmp_path / "one_d.safetensors", "manifold-1d", 0)
    args = ["evaluate", str(prepared), "-o", str(tmp_path / "r"), "-w", str(w),
            "--onnx", spec.format(graph=graph, bad=bad, junk=junk, fixed=fixed)]
    res = CliRunner().invoke(app, args + (["--frames", str(prepared.parent / "raw")] if frames else []))
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_evaluate_rejects_bad_split(prepared: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["evaluate", str(prepared), "-o", str(tmp_path / "r"), "--split", "test"])
    assert result.exit_code == 1 and "--split" in result.output
    assert not (tmp_path / "r").exists()


def test_eval_set_takes_the_asked_split_and_at_most_the_asked_identities(prepared: Path):
    from microdeblur.dataset import PreparedData

    data = PreparedData.load(prepared, dz_range=eval_protocol.DZ_RANGE)
    train, val = data.split()
    es = eval_protocol.build_eval_set(data, "train", quick=False, identities=2)
    assert len(es.names) == 2 and set(es.names) <= {data.identities[i] for i in train}
    assert not set(es.names) & {data.identities[i] for i in val}
    everything = eval_protocol.build_eval_set(data, "all", quick=False)
    assert sorted(everything.names) == sorted(data.identities)


def test_evaluate_rejects_too_few_identities(prepared: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["evaluate", str(prepared), "-o", str(tmp_path / "r"), "--identities", "1"])
    assert result.exit_code == 1 and "--identities" in result.output
    assert not (tmp_path / "r").exists()


def test_working_pixel_sizes_from_index_or_reference_optics():
    index = {"days": {"a": {"pixel_size_um": 0.2}, "b": {"pixel_size_um": None}, "c": {}}}
    px, assumed = eval_protocol.working_pixel_sizes(index, ["b", "a", "a", "c"], 0.5)
    assert px == pytest.approx({"a": 0.2, "b": 0.65, "c": 0.65}) and assumed == ["b", "c"]


def test_report_folder_that_is_or_holds_prepared_data_is_refused(prepared: Path, tmp_path: Path):
    before = sorted(p.relative_to(prepared) for p in prepared.rglob("*"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.json").write_text("{}")
    for out in (prepared, prepared / "day01", prepared / "new" / "sub", other):
        result = CliRunner().invoke(app, ["evaluate", str(prepared), "-o", str(out), "--overwrite", "--quick"])
        assert result.exit_code == 1 and "prepared" in result.output, (out, result.output)
    assert sorted(p.relative_to(prepared) for p in prepared.rglob("*")) == before
    assert sorted(p.name for p in other.iterdir()) == ["index.json"]


def test_overwrite_replaces_only_report_files(prepared: Path, tmp_path: Path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    index = json.loads((data / "index.json").read_text())
    index["days"]["day02"]["pixel_size_um"] = None
    (data / "index.json").write_text(json.dumps(index))
    report = tmp_path / "work"
    report.mkdir()
    (report / "my_notes.txt").write_text("keep me")
    (report / "report.md").write_text("old report")
    w = _tiny_weights(tmp_path / "w.safetensors", "manifold-1d", 0)
    args = ["evaluate", str(data), "-o", str(report), "-w", str(w), "--split", "all", "--quick", "--device", "cpu",
            "--classifier-epochs", "1"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "report.md" in refused.output
    monkeypatch.chdir(report)
    result = CliRunner().invoke(app, [*args[:3], ".", *args[4:], "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (report / "my_notes.txt").read_text() == "keep me"
    text = (report / "report.md").read_text()
    assert text.startswith("# microdeblur evaluation") and "**assumed** there" in text and "day02" in text
    m = json.loads((report / "metrics.json").read_text())
    assert m["protocol"]["pixel_um_assumed"] == ["day02"]
    assert sorted(p.name for p in report.iterdir()) == sorted(["my_notes.txt", "metrics.json", "report.md",
                                                                *m["figures"]])

    def tree(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*"))

    assert tree(data) == tree(prepared)
