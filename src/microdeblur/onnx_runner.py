"""The ONNX Runtime runner of the network (CPU, no torch import) and the export of its two graphs.

A weights file `W.safetensors` has its graphs beside it, `W.encoder.onnx` (tiles -> identity, blur) and
`W.decoder.onnx` (identity, blur -> tiles), each carrying the SHA-256 of the weights it was exported from; a graph
that does not match its weights is never used (`open_runner`). Export needs torch and the `onnx` package
(`microdeblur export onnx`); running needs only onnxruntime."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np

from .engine import cpu_batch_size
from .errors import UserError
from .interrupts import shielded
from .model_config import ModelConfig

SUFFIXES = (".encoder.onnx", ".decoder.onnx")
DIGEST_KEY = "microdeblur.weights_sha256"
OPSET = 17


def available() -> bool:
    """Whether onnxruntime can be imported (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def graph_paths(weights: Path) -> tuple[Path, Path]:
    """Where the encoder and decoder graphs of a weights file live (beside it)."""
    stem = weights.with_suffix("") if weights.suffix == ".safetensors" else weights
    return tuple(stem.with_name(stem.name + s) for s in SUFFIXES)  # type: ignore[return-value]


def weights_digest(weights: Path) -> str:
    """SHA-256 of a weights file (what its graphs must record)."""
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _recorded_digest(session) -> str | None:
    return session.get_modelmeta().custom_metadata_map.get(DIGEST_KEY)


def session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session on a graph file (`threads` 0: all cores), or a UserError for a damaged one."""
    with shielded():  # onnxruntime turns a Ctrl-C during its import into an ImportError: hold it until after
        import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    # no busy-waiting between calls: with spinning the idle pool burnt ~70 % more CPU and a 2048x1536 frame took
    # 0.47 s instead of 0.30 s on 2 cores (the reader thread and stitching compete with it; docs/benchmarks.md)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types for damaged graphs
        raise UserError(f"{path}: not a readable ONNX graph ({type(e).__name__})") from None


class OnnxRunner:
    """encode / decode of numpy tiles through the two graphs of a weights file on the CPU."""

    name = "onnx"

    def __init__(self, config: ModelConfig, encoder: Path, decoder: Path, threads: int = 0) -> None:
        self.config = config
        self.encoder, self.decoder = session(encoder, threads), session(decoder, threads)

    def default_batch_size(self) -> int:
        """Tiles per network call (engine.cpu_batch_size, as PyTorch on a CPU)."""
        return cpu_batch_size(self.config)

    def encode(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tiles [n,1,T,T] float32 -> (identity [n,Di], blur [n,Db]) float32."""
        identity, blur = self.encoder.run(None, {"tiles": np.ascontiguousarray(tiles, dtype=np.float32)})
        return identity, blur

    def decode(self, identity: np.ndarray, blur: np.ndarray) -> np.ndarray:
        """(identity [n,Di], blur [n,Db]) -> tiles [n,1,T,T] float32."""
        feeds = {"identity": np.ascontiguousarray(identity, dtype=np.float32),
                 "blur": np.ascontiguousarray(blur, dtype=np.float32)}
        return self.decoder.run(None, feeds)[0]


def open_runner(config: ModelConfig, weights: Path, threads: int = 0) -> tuple[OnnxRunner | None, str]:
    """An OnnxRunner on the graphs exported from exactly these weights, or None and why not."""
    paths = graph_paths(weights)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        return None, f"no ONNX graphs beside {weights.name} ({', '.join(missing)} missing)"
    runner = OnnxRunner(config, *paths, threads=threads)
    digest = weights_digest(weights)
    for p, session in zip(paths, (runner.encoder, runner.decoder)):
        if _recorded_digest(session) != digest:
            return None, f"{p.name} was exported from other weights than {weights.name}"
    return runner, "graphs match the weights"


def export_graphs(weights: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Export the encoder and decoder graphs of a weights file beside it (both or neither; dynamic batch size)."""
    try:
        import onnx
    except ImportError:
        raise UserError("exporting ONNX graphs needs the onnx package: pip install 'microdeblur[onnx]'") from None
    import torch

    from .atomic import Outputs
    from .torch_runner import DecoderGraph, EncoderGraph
    from .weights import load_weights

    model, meta = load_weights(weights)
    x = torch.zeros(2, 1, meta.config.tile, meta.config.tile)
    with torch.no_grad():
        identity, blur = EncoderGraph(model)(x)
    props = {DIGEST_KEY: weights_digest(weights), "microdeblur.variant": meta.variant}
    graphs = ((EncoderGraph(model), (x,), ["tiles"], ["identity", "blur"]),
              (DecoderGraph(model), (identity, blur), ["identity", "blur"], ["tiles"]))
    paths = graph_paths(weights)
    with Outputs(overwrite, [weights]) as written, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed by the tile size: traced as constants
        for (module, args, names_in, names_out), path in zip(graphs, paths):
            tmp = written.add(path).tmp
            torch.onnx.export(module, args, str(tmp), input_names=names_in, output_names=names_out, opset_version=OPSET,
                              dynamic_axes={n: {0: "n"} for n in names_in + names_out}, dynamo=False)
            graph = onnx.load(str(tmp))
            onnx.helper.set_model_props(graph, props)
            onnx.save(graph, str(tmp))
            os.chmod(tmp, 0o644)
    return paths
