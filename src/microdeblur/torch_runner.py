"""The PyTorch runner of the network behind a `Deblurrer` (the reference backend; CPU, CUDA, MPS)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .devices import autocast, compute_dtype
from .engine import BATCH_SIZE, cpu_batch_size, memory_ratio
from .model_config import ModelConfig


def default_batch_size(device: torch.device, config: ModelConfig) -> int:
    """Tiles per network call: cpu_batch_size on CPU; on a CUDA GPU as many as a quarter of its free memory holds
    at 400 bytes per tile pixel for the shipped network's size (about twice its live activations, counted from
    its layer sizes; larger networks in proportion: engine.memory_ratio), between BATCH_SIZE and 2048."""
    if device.type != "cuda":
        return cpu_batch_size(config)
    free, _ = torch.cuda.mem_get_info(device)
    per_tile = 400 * config.tile**2 * memory_ratio(config)
    return int(np.clip(free // 4 // per_tile, BATCH_SIZE, 2048))


class TorchRunner:
    """encode / decode of numpy tiles through a torch model on a device (a private eval-mode copy;
    channels-last on CPU; bfloat16 autocast on a GPU unless `precision` says otherwise)."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", precision: str = "auto") -> None:
        self.device = torch.device(device)
        self.amp = compute_dtype(self.device, precision)
        self.config = model.config
        self.model = copy.deepcopy(model).eval().to(self.device)
        self.channels_last = self.device.type == "cpu"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def default_batch_size(self) -> int:
        """Tiles per call that suit the device (default_batch_size)."""
        return default_batch_size(self.device, self.config)

    def _tiles(self, tiles: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32)).to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _encode(self, tiles: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp):
            codes = self.model.encode(self._tiles(tiles))
        return codes.identity, codes.blur

    def _decode(self, identity: torch.Tensor, blur: np.ndarray) -> np.ndarray:
        b = torch.tensor(np.asarray(blur), dtype=torch.float32, device=self.device)  # codes are small: a copy
        with autocast(self.device, self.amp):
            out = self.model.decode(identity, b)
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def encode(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tiles [n,1,T,T] float32 -> (identity [n,Di], blur [n,Db]) float32."""
        identity, blur = self._encode(tiles)
        return identity.float().cpu().numpy(), blur.float().cpu().numpy()

    @torch.inference_mode()
    def decode(self, identity: np.ndarray, blur: np.ndarray) -> np.ndarray:
        """(identity [n,Di], blur [n,Db]) -> tiles [n,1,T,T] float32."""
        return self._decode(torch.from_numpy(np.asarray(identity, dtype=np.float32)).to(self.device), blur)


class EncoderGraph(nn.Module):
    """tiles -> (identity, blur) of a model (for ml-vae the means, as the Deblurrer uses them): the ONNX encoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.model.encode(x)
        return codes.identity, codes.blur


class DecoderGraph(nn.Module):
    """(identity, blur) -> tiles of a model: the ONNX decoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, identity: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
        return self.model.decode(identity, blur)
