"""Time `microdeblur deblur` as users run it, side by side with Richardson-Lucy, in one run (issues 12 and 14).

(a) one 1024x768 uint16 frame, whole process (fresh `python -m microdeblur`), at the weights' scale and at
    `--scale 1`, interleaved with 30 Richardson-Lucy iterations as a fresh process (numpy + tifffile + skimage,
    the reference microscope's defocus PSF at 10 um); wall and CPU seconds of each child;
(b) 20 such frames in one call: per-frame time against one RL-30 process;
(c) in-process `deblur_plane` of a 2048x1536 frame (model loaded once), per tile grid;
(d) a 2048x1536 uint16 stack through the CLI: wall, CPU, peak RSS (/usr/bin/time -v);
(e) seams: tiled vs whole-image output of the same fully convolutional network on 512x512 and 768x768 working
    images, with min-MSE PSNR against the in-focus plane;
(f) the network alone on 128-px tile batches, PyTorch against ONNX Runtime (when installed);
(g) start-up: interpreter, `import torch`, `import microdeblur.inference`, `microdeblur --version`;
(h) where one fresh single-frame process spends its time (stages timed inside it).

With --before SRC (a `src` folder of another version, e.g. from `git archive`) the CLI rows of (a), (b) and (d)
are repeated with that code (PYTHONPATH), interleaved, so before/after share the machine's load.

Usage: python benchmarks/deblur_bench.py [--weights W] [--before DIR/src] [--planes 100] [--skip-stack] [--only a,b,...]
    [--backends torch,onnx] [--scale S] [--overlap PX]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `microdeblur` sets it for the CLI

FRAME = (768, 1024)
STACK = (1536, 2048)
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "manifold-1d.safetensors"
RL_CHILD = """
import sys, numpy as np, tifffile
from skimage.restoration import richardson_lucy
img = tifffile.imread(sys.argv[1]).astype(np.float32) / 65535
out = richardson_lucy(img, np.load(sys.argv[2]), num_iter=30)
tifffile.imwrite(sys.argv[3], out.astype(np.float32))
"""


def texture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth cell-like texture, unit variance, float32."""
    rng = np.random.default_rng(seed)
    coarse = ndi.gaussian_filter(rng.normal(size=(shape[0] // 8, shape[1] // 8)), 1.5)
    return ndi.zoom(coarse / coarse.std(), 8, order=1).astype(np.float32)[: shape[0], : shape[1]]


def make_frame(path: Path, shape: tuple[int, int] = FRAME, seed: int = 1) -> np.ndarray:
    """Blurred uint16 bright-field-like frame."""
    rng = np.random.default_rng(seed)
    frame = 20000 + 3000 * ndi.gaussian_filter(texture(shape, seed), 3) + rng.normal(0, 20, shape)
    frame = np.clip(frame, 0, 65535).astype(np.uint16)
    tifffile.imwrite(path, frame, imagej=True, metadata={"axes": "YX"})
    return frame


def make_stack(path: Path, planes: int) -> None:
    """Through-focus uint16 ZYX stack written plane by plane (contrast flips across the middle)."""
    tex = texture(STACK)
    rng = np.random.default_rng(2)
    out = tifffile.memmap(path, shape=(planes, *STACK), dtype=np.uint16, imagej=True,
                          metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"})
    for z in range(planes):
        plane = 20000 + 60 * (z - planes // 2) * tex + rng.standard_normal(STACK, dtype=np.float32) * 20
        out[z] = np.clip(plane, 0, 65535).astype(np.uint16)
    out.flush()
    del out


def default_weights(work: Path) -> Path:
    """Shipped weights if they load, else an untrained default-config model saved into `work`."""
    from microdeblur.networks import DisentangledAE, ModelConfig
    from microdeblur.weights import WeightsMeta, load_weights, save_weights

    try:
        load_weights(SHIPPED)
        return SHIPPED
    except Exception:  # noqa: BLE001 - shipped weights of an older architecture
        pass
    model = DisentangledAE(ModelConfig()).eval()
    path = work / "untrained.safetensors"
    save_weights(path, model, WeightsMeta(variant="manifold-1d", config=model.config, scale=0.5,
                                          focus_blur_code=np.zeros(1, np.float32)))
    return path


def reference_psf(path: Path, dz_um: float = 10.0) -> Path:
    """The reference microscope's defocus PSF at dz_um, camera pixels at the sample (what baselines.py uses)."""
    from microdeblur.baselines import psf_size
    from microdeblur.microscope import Optics, defocus_psf

    optics = Optics()
    np.save(path, defocus_psf(optics, dz_um, optics.pixel_um, psf_size(dz_um, optics.pixel_um, optics)))
    return path


def child(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one child process (CPU = user + sys from the kernel's child accounting)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    wall = time.perf_counter() - t
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cli(args: list[str]) -> list[str]:
    """Command line running the CLI module with this interpreter."""
    return [sys.executable, "-m", "microdeblur", "-q", *args]


def env_for(src: Path | None) -> dict | None:
    """Environment running the code in `src` (None: the installed one)."""
    if src is None:
        return None
    return {**os.environ, "PYTHONPATH": str(Path(src).resolve())}


def fmt(runs: list[tuple[float, float]]) -> str:
    """Median wall and CPU of runs."""
    w = statistics.median(r[0] for r in runs)
    c = statistics.median(r[1] for r in runs)
    return f"wall {w:5.2f} s, CPU {c:5.2f} s (runs {' '.join(f'{r[0]:.2f}' for r in runs)})"


def med(runs: list[tuple[float, float]], i: int = 0) -> float:
    return statistics.median(r[i] for r in runs)


def load() -> str:
    return "load " + " ".join(f"{v:.1f}" for v in os.getloadavg())


BACKENDS = ("torch", "onnx")


def variants(weights: Path, before: Path | None, backends: tuple[str, ...] = BACKENDS) -> list[tuple[str, Path | None, list[str]]]:
    """(label, src or None, extra CLI options) of every version timed: this code on each of `backends` it can run
    for these weights (onnx when their exported graphs lie beside them), and the --before code on its default."""
    from microdeblur.onnx_runner import graph_paths

    out = [("torch", None, ["--backend", "torch"])] if "torch" in backends else []
    if "onnx" in backends and all(p.is_file() for p in graph_paths(weights)):
        out.append(("onnx", None, ["--backend", "onnx"]))
    return out + ([("before", before, [])] if before else [])


def section_a_b(work: Path, weights: Path, before: Path | None, repeats: int, n_frames: int) -> None:
    """Whole-process single frame and a batch of frames, interleaved with RL-30 fresh processes."""
    frame = work / "frame.tif"
    make_frame(frame)
    psf = reference_psf(work / "psf.npy")
    batch = work / "batch"
    batch.mkdir()
    for i in range(n_frames):
        make_frame(batch / f"f{i:02d}.tif", seed=10 + i)
    common = ["-w", str(weights), "--device", "cpu", "--overwrite"]
    versions = variants(weights, before)
    rows: dict[str, list] = {}
    for _ in range(repeats):
        rows.setdefault("RL-30 (fresh process)", []).append(
            child([sys.executable, "-c", RL_CHILD, str(frame), str(psf), str(work / "rl.tif")]))
        for name, src, extra in versions:
            env = env_for(src)
            rows.setdefault(f"{name}: deblur 1 frame", []).append(
                child(cli(["deblur", str(frame), "-o", str(work / "o.tif"), *common, *extra]), env))
            rows.setdefault(f"{name}: deblur 1 frame --scale 1", []).append(
                child(cli(["deblur", str(frame), "-o", str(work / "o1.tif"), "--scale", "1", *common, *extra]), env))
    for _ in range(max(1, repeats // 2)):
        for name, src, extra in versions:
            rows.setdefault(f"{name}: deblur {n_frames} frames in one call", []).append(
                child(cli(["deblur", str(batch), "-o", str(work / f"out_{name}") + "/", *common, *extra]), env_for(src)))
    rl = med(rows["RL-30 (fresh process)"])
    print(f"(a)/(b) 1024x768 uint16 frame(s), {load()}")
    for name, runs in rows.items():
        extra = ""
        if "frames in one call" in name:
            per = med(runs) / n_frames
            extra = f" -> {per:.2f} s/frame = {per / rl:.2f} x RL-30 (target <= 0.25)"
        elif "deblur" in name:
            extra = f" -> {med(runs) / rl:.2f} x RL-30 (target <= 1.0)"
        print(f"    {name:38s} {fmt(runs)}{extra}")


def section_c(weights: Path, repeats: int) -> None:
    """In-process deblur_plane of a 2048x1536 frame for several tile grids."""
    import torch

    from microdeblur.engine import Deblurrer, cpu_batch_size
    from microdeblur.weights import load_weights

    model, meta = load_weights(weights)
    frame = make_frame(Path(tempfile.mkdtemp()) / "big.tif", STACK)
    print(f"(c) in-process deblur_plane, 2048x1536 uint16, scale {meta.scale:g}, torch threads "
          f"{torch.get_num_threads()}, {load()}")
    from microdeblur.onnx_runner import open_runner

    runner, why = open_runner(meta.config, weights)
    default = cpu_batch_size(meta.config)  # what deblur uses; 32 (the shipped size) too where it differs
    sizes = sorted({default, 32})
    grids = [(48, False, default, "torch"), (48, True, default, "torch")]
    grids += [(32, True, bs, "torch") for bs in sizes] + [(32, True, 2 * max(sizes), "torch")]
    grids += [(32, True, bs, "onnx") for bs in sizes] if runner is not None else []
    grids += [(16, True, default, "torch")] + ([(16, True, default, "onnx")] if runner is not None else [])
    for overlap, align, bs, backend in grids:
        db = Deblurrer(model if backend == "torch" else runner, meta, device="cpu", overlap=overlap, batch_size=bs)
        if not align:
            db.align = 1
        db.deblur_plane(frame)  # warm-up (oneDNN primitives)
        runs = []
        for _ in range(repeats):
            c, t = time.process_time(), time.perf_counter()
            db.deblur_plane(frame)
            runs.append((time.perf_counter() - t, time.process_time() - c))
        n = len(db.grid(db._working(frame)[0].shape))
        print(f"    {backend:5s} overlap {overlap} {'aligned  ' if align else 'unaligned'} batch {bs:2d}{' (default)' if bs == default else '          '}: {n:3d} tiles, {fmt(runs)}"
              f" (target <= 2 s)")


def section_d(work: Path, weights: Path, before: Path | None, planes: int, backends: tuple[str, ...] = BACKENDS,
              scale: float | None = None, overlap: int | None = None) -> None:
    """A big stack through the CLI (at `scale` and `overlap`, default the CLI's): wall, CPU and peak RSS."""
    stack = work / "stack.tif"
    make_stack(stack, planes)
    at = ([] if scale is None else ["--scale", f"{scale:g}"]) + ([] if overlap is None else ["--overlap", str(overlap)])
    print(f"(d) {planes}-plane 2048x1536 uint16 stack through the CLI{' ' + ' '.join(at) if at else ''}, {load()}")
    for name, src, extra in variants(weights, before, backends):
        cmd = ["/usr/bin/time", "-v", *cli(["deblur", str(stack), "-o", str(work / f"stack_{name}.tif"),
                                            "-w", str(weights), "--device", "cpu", "--overwrite", *at, *extra])]
        t = time.perf_counter()
        res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env_for(src))
        wall = time.perf_counter() - t
        if res.returncode:
            raise SystemExit(res.stderr)
        kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
        cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", res.stderr).group(1)) for k in ("User", "System"))
        per = wall / planes
        print(f"    {name}: wall {wall:.1f} s ({per:.2f} s/plane -> {100 * per:.0f} s per 100 planes, target <= 180), "
              f"CPU {cpu:.1f} s, peak RSS {kb / 2**20:.2f} GiB (target <= 2 GB), {load()}")
        (work / f"stack_{name}.tif").unlink(missing_ok=True)


def section_e(work: Path, weights: Path) -> None:
    """Seams: tiled vs whole-image prediction of the same network on a simulated 512x512 working image."""
    import torch

    from microdeblur.image_read import read_image
    from microdeblur.normalize import frame_normalizer
    from microdeblur.resizing import rescale
    from microdeblur.simulate import simulate_days
    from microdeblur.tiling import extract_tiles, stitch, tile_grid
    from microdeblur.weights import load_weights

    model, meta = load_weights(weights)
    simulate_days(work / "sim", days=1, planes=3, size=(1024, 1024), seed=3, z_step_um=10.0, cells=None)
    simulate_days(work / "sim2", days=1, planes=3, size=(2048, 1536), seed=5, z_step_um=10.0, cells=None)
    code = torch.as_tensor(np.asarray(meta.focus_blur_code, np.float32)).reshape(1, -1)

    @torch.inference_mode()
    def net(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=torch.channels_last)
        return model.decode(model.encode(t).identity, code.expand(len(t), -1)).numpy()

    print("(e) seams: |tiled - whole-image| of the deblurred working image (normalised units; 1 = the input's "
          "1st-99.8th percentile span), simulated planes at -10 and +10 um, 512x512 and 768x768 working images")
    from microdeblur.metrics import truth_scores

    for plane in sorted((work / "sim" / "day01").glob("*_z00[02].tif")) + [work / "sim2" / "day01" / "day01_z000.tif"]:
        raw = rescale(read_image(plane).data, meta.scale)
        side = min(raw.shape)  # the network decodes square inputs only: the largest square of the frame
        raw = raw[:side, :side]
        truth = rescale(read_image(plane.with_name(plane.name.replace("_z000", "_z001").replace("_z002", "_z001"))
                                   ).data, meta.scale)[:side, :side]  # the in-focus plane
        norm = frame_normalizer(raw)
        work_plane = norm.before(raw)
        whole = net(work_plane[None, None])[0, 0]
        span = np.percentile(whole, 99.8) - np.percentile(whole, 1)
        psnr = truth_scores(norm.after(whole), truth)["minmse_psnr"]
        print(f"    {plane.parent.parent.name}/{plane.name} ({work_plane.shape[1]}x{work_plane.shape[0]}): whole-image "
              f"output span (p1..p99.8) {span:.3f}; min-MSE PSNR vs focus: input "
              f"{truth_scores(raw, truth)['minmse_psnr']:.2f} dB, whole-image output {psnr:.2f} dB")
        for overlap in (16, 24, 32, 48):
            for align in (1, model.config.downsample):
                g = tile_grid(work_plane.shape, model.config.tile, overlap, align)
                t = extract_tiles(work_plane, g)[:, None]
                y = stitch(np.concatenate([net(t[i:i + 32]) for i in range(0, len(t), 32)])[:, 0], g)
                d = np.abs(y - whole)
                real = g.tile - int(np.diff(g.xs).max())
                print(f"      overlap {overlap:2d} {'aligned  ' if align > 1 else 'unaligned'} ({len(g):2d} tiles, "
                      f"narrowest overlap {real} px): max {d.max():.4f}, mean {d.mean():.5f}, min-MSE PSNR "
                      f"{truth_scores(norm.after(y), truth)['minmse_psnr']:.2f} dB")


def section_f(weights: Path, n: int = 64) -> None:
    """The network alone on 128-px tile batches: PyTorch against ONNX Runtime (same process, same tiles)."""
    import io
    import warnings

    import torch
    from torch import nn

    from microdeblur.weights import load_weights

    model, meta = load_weights(weights)

    class Swap(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.m.decode(self.m.encode(x).identity, b)

    swap = Swap(model.eval()).eval()
    x = torch.rand(n, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    b = torch.full((n, 1), float(np.asarray(meta.focus_blur_code).reshape(-1)[0]))

    print(f"(f) network on {n} tiles of 128 px (encode + decode), {torch.get_num_threads()} threads, {load()}")
    fns = {f"PyTorch eager, channels-last, batch {bs}": (lambda bs=bs: [swap(x[i:i + bs], b[i:i + bs])
                                                                        for i in range(0, n, bs)]) for bs in (32, 64)}
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        print("    onnxruntime not installed: PyTorch only")
    if ort is not None:
        buf = io.BytesIO()
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(swap, (x[:4], b[:4]), buf, input_names=["x", "b"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}, "b": {0: "n"}, "y": {0: "n"}}, opset_version=17,
                              dynamo=False)
        export = time.perf_counter() - t
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        xn, bn = x.contiguous().numpy(), b.numpy()
        with torch.inference_mode():
            diff = np.abs(sess.run(None, {"x": xn[:8], "b": bn[:8]})[0] - swap(x[:8], b[:8]).numpy()).max()
        print(f"    ONNX Runtime {ort.__version__}: export {export:.2f} s (torch.onnx, needs torch), "
              f"max |ORT - torch| {diff:.1e}")
        for bs in (32, 64):
            fns[f"ONNX Runtime, batch {bs}"] = (lambda bs=bs: [sess.run(None, {"x": xn[i:i + bs], "b": bn[i:i + bs]})
                                                              for i in range(0, n, bs)])
    runs: dict[str, list] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(5):  # interleaved: every candidate sees the same load
            for name, fn in fns.items():
                c, t = time.process_time(), time.perf_counter()
                fn()
                runs[name].append((time.perf_counter() - t, time.process_time() - c))
    for name, r in runs.items():
        print(f"    {name:40s} {n / med(r):4.0f} tiles/s, {n / med(r, 1):4.0f} tiles per CPU-s (median of 5)")


STAGES_CHILD = """
import sys, time
t0 = time.perf_counter()
from microdeblur.backends import load_deblurrer
from microdeblur.image_read import read_image
from microdeblur.image_write import write_tiff
t1 = time.perf_counter()
db, meta = load_deblurrer(sys.argv[1], "cpu", sys.argv[4])
t2 = time.perf_counter()
img = read_image(sys.argv[2])
t3 = time.perf_counter()
out = db.deblur_plane(img.data)
t4 = time.perf_counter()
write_tiff(sys.argv[3], out, "YX", overwrite=True)
t5 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2:.2f} {t4 - t3:.2f} {t5 - t4:.2f}")
"""


def section_h(work: Path, weights: Path, repeats: int) -> None:
    """Where one fresh deblur process of a 1024x768 frame spends its time (stages timed inside the process), per
    backend (the weights (torch) or the graphs (onnx) are loaded in 'load network')."""
    frame = work / "stages.tif"
    make_frame(frame)
    start = child([sys.executable, "-c", "pass"])[0]
    for backend in [extra[1] for name, _, extra in variants(weights, None)]:
        t = time.perf_counter()
        rows = []
        for _ in range(repeats):
            res = subprocess.run([sys.executable, "-c", STAGES_CHILD, str(weights), str(frame), str(work / "st_out.tif"),
                                  backend], capture_output=True, text=True, check=True)
            rows.append([float(v) for v in res.stdout.split()])
        m = np.median(np.array(rows), axis=0)
        print(f"(h) {backend}: one fresh process, 1024x768 frame at the weights' scale (median of {repeats}, {load()}): "
              f"interpreter {start:.2f} s, imports {m[0]:.2f} s, load network {m[1]:.2f} s, read {m[2]:.2f} s, "
              f"deblur_plane {m[3]:.2f} s, write {m[4]:.2f} s ({time.perf_counter() - t:.0f} s for the section)")


def section_g(repeats: int) -> None:
    """Start-up costs as fresh processes."""
    print(f"(g) start-up (fresh processes, median of {repeats}), {load()}")
    for name, code in (("python -c pass", "pass"), ("import numpy, tifffile", "import numpy, tifffile"),
                       ("import torch", "import torch"), ("import onnxruntime", "import onnxruntime"),
                       ("import microdeblur.inference", "import microdeblur.inference")):
        try:
            runs = [child([sys.executable, "-c", code]) for _ in range(repeats)]
        except SystemExit:
            print(f"    {name:32s} not available")
            continue
        print(f"    {name:32s} {fmt(runs)}")
    print(f"    {'microdeblur --version':32s} {fmt([child(cli(['--version'])) for _ in range(repeats)])}")


def main() -> None:
    """Run the sections and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--before", type=Path, default=None, help="src folder of the version to compare with")
    ap.add_argument("--planes", type=int, default=100)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-stack", action="store_true")
    ap.add_argument("--only", default="a,c,d,e,f,g,h", help="sections to run (a includes b)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--backends", default=",".join(BACKENDS), help="backends the stack (d) runs on")
    ap.add_argument("--scale", type=float, default=None, help="deblur --scale of the stack (d); default the weights'")
    ap.add_argument("--overlap", type=int, default=None, help="deblur --overlap of the stack (d); default the CLI's")
    args = ap.parse_args()
    if not set(args.backends.split(",")) <= set(BACKENDS):
        ap.error(f"--backends takes a comma-separated subset of {','.join(BACKENDS)}, got {args.backends}")
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="deblur_bench_", dir=args.workdir))
    try:
        weights = args.weights or default_weights(work)
        print(f"weights: {weights}; {os.cpu_count()} cores; {load()}; before: {args.before or '-'}")
        if "g" in only:
            section_g(args.repeats)
        if "a" in only:
            section_a_b(work, weights, args.before, args.repeats, args.frames)
        if "h" in only:
            section_h(work, weights, args.repeats)
        if "c" in only:
            section_c(weights, 3)
        if "f" in only:
            section_f(weights)
        if "e" in only:
            section_e(work, weights)
        if "d" in only and not args.skip_stack:
            section_d(work, weights, args.before, args.planes, tuple(args.backends.split(",")), args.scale,
                      args.overlap)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
