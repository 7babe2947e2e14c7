"""Frozen weights pre-packed for MKL's GEMM: the CPU trainer's base-weight matmuls without per-call packing.

MKL's sgemm copies ("packs") both operands into its blocked layout on every call. With LoRA the base weights
never change, yet at E2E's ~500 real tokens per batch packing a GPT-2 medium weight on every call costs about 7 %
of each matmul (15 % for the LM head's ~250 loss rows). MKL's packed-GEMM API (``sgemm_pack`` once,
``sgemm_compute`` per call) removes that cost; torch ships MKL and exports the API's Fortran symbols from
``libtorch_cpu``, which this module calls through ctypes. Packed: the blocks' forward ``x @ W`` and the LM head's
``h @ W^T`` (logits) and ``g @ W`` (their gradient), each copy about its weight's size in memory (the pages of
MKL's size bound that it does not write are never touched); the blocks' backward ``dY @ W^T`` stays a plain
``torch.mm`` (a second copy of every weight would cost more memory than peft's training uses).

Used only on the CPU, in fp32, outside autocast, for weights that do not require grad and that a ``Packs`` object
packed (``pack_frozen(model)``; the trainer does this unless ``--no-cpu-prepack``). A pack is used only while its
weight's version counter and storage are those it was packed from, so an in-place change through the normal API
(``merge_lora``, ``load_state_dict``) falls back to ``torch.mm`` instead of using stale numbers. The result equals
``torch.mm`` up to float rounding (MKL sums in another order); tests/test_mkl_prepack.py checks it.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

_NOMINAL_ROWS = 512  # the n MKL is told at packing time; the packed layout does not depend on it (checked at load)


class _Mkl:
    """The three Fortran entry points, in their explicit 64-bit-integer form (``*_64``: the same whichever integer
    width torch's MKL interface was built with), all arguments by reference."""

    def __init__(self, lib: ctypes.CDLL):
        self.get_size = lib.SGEMM_PACK_GET_SIZE_64
        self.get_size.restype = ctypes.c_size_t
        self.pack = lib.SGEMM_PACK_64
        self.pack.restype = None
        self.compute = lib.SGEMM_COMPUTE_64
        self.compute.restype = None


_MKL: _Mkl | None = None
_MKL_CHECKED = False


def _int(v: int) -> ctypes.c_int64:
    return ctypes.c_int64(int(v))


def _load() -> _Mkl | None:
    """MKL's packed GEMM from torch's own library, or None (no MKL build, symbols absent, or a failed check)."""
    global _MKL, _MKL_CHECKED
    if _MKL_CHECKED:
        return _MKL
    _MKL_CHECKED = True
    if not torch.backends.mkl.is_available():
        return None
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        mkl = _Mkl(ctypes.CDLL(path))
    except (OSError, AttributeError):
        return None
    _MKL = mkl
    if not _self_check():
        _MKL = None
    return _MKL


def _self_check() -> bool:
    """Pack once, compute for several row counts, compare with torch.mm: the API is used beyond MKL's letter
    (one pack for every row count), so a library where that would not hold is never used."""
    gen = torch.Generator().manual_seed(0)  # its own generator: the global RNG stream is left untouched
    w = torch.randn(96, 80, generator=gen)
    for transpose in (False, True):
        pack = _PackedMatrix(w, transpose)
        ref_w = w.t() if transpose else w
        try:
            for rows in (1, 7, 64, 300):
                x = torch.randn(rows, ref_w.shape[0], generator=gen)
                out = torch.empty(rows, ref_w.shape[1])
                pack.compute(x, out, 0.0)
                if not torch.allclose(out, x @ ref_w, rtol=1e-4, atol=1e-4):
                    return False
        finally:
            pack.close()
    return True


def available() -> bool:
    """True when MKL's packed GEMM can be used in this process."""
    return _load() is not None


class _PackedMatrix:
    """One row-major weight packed as MKL's operand for ``x @ W`` (``W`` ``[K, O]``) or, with ``transpose``,
    ``x @ W^T`` (``W`` ``[O, K]``, an ``nn.Linear`` layout such as the LM head). Column-major, MKL computes
    ``C^T = op(W) x^T`` with the weight as its packed ``A``."""

    def __init__(self, weight: torch.Tensor, transpose: bool = False):
        mkl = _MKL
        w = weight.detach().contiguous()  # a no-op for model weights; MKL copies it into the pack either way
        o, k = w.shape if transpose else (w.shape[1], w.shape[0])
        self.k, self.o = k, o
        self._m, self._k = _int(o), _int(k)
        rows = _int(_NOMINAL_ROWS)
        nbytes = mkl.get_size(b"A", ctypes.byref(self._m), ctypes.byref(rows), ctypes.byref(self._k))
        # anonymous mapping: the part of get_size's bound that MKL does not write is never resident
        self._map = mmap.mmap(-1, max(int(nbytes), 1))
        self._buf = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(self._map)))
        mkl.pack(b"A", b"T" if transpose else b"N", ctypes.byref(self._m), ctypes.byref(rows), ctypes.byref(self._k),
                 ctypes.byref(ctypes.c_float(1.0)), ctypes.c_void_p(w.data_ptr()), ctypes.byref(_int(w.stride(0))),
                 self._buf)
        self.version = weight._version
        self.data_ptr = weight.data_ptr()

    def compute(self, x: torch.Tensor, out: torch.Tensor, beta: float) -> None:
        """``out = x op(W) + beta * out`` for row-major ``x`` ``[n, K]`` (unit column stride) and ``out`` ``[n, O]``
        (unit column stride)."""
        n = x.shape[0]
        if n == 0:
            return
        _MKL.compute(b"P", b"N", ctypes.byref(self._m), ctypes.byref(_int(n)), ctypes.byref(self._k), self._buf,
                     ctypes.byref(self._m), ctypes.c_void_p(x.data_ptr()), ctypes.byref(_int(x.stride(0))),
                     ctypes.byref(ctypes.c_float(beta)), ctypes.c_void_p(out.data_ptr()),
                     ctypes.byref(_int(out.stride(0))))

    def close(self) -> None:
        self._buf = None
        self._map.close()


_PACKS: dict[tuple[int, bool], _PackedMatrix] = {}  # (id(weight), transpose) -> pack, while a Packs holds it


@dataclass
class Packs:
    """The packs made by ``pack_frozen``; ``release()`` (or the trainer finishing) frees them."""

    ids: list[tuple[int, bool]] = field(default_factory=list)
    finalizers: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def release(self) -> None:
        for key in self.ids:
            pack = _PACKS.pop(key, None)
            if pack is not None:
                pack.close()
        for fin in self.finalizers:
            fin.detach()
        self.ids, self.finalizers = [], []


def _frozen_weights(model: nn.Module) -> Iterable[tuple[torch.Tensor, bool]]:
    """(weight, transpose) for every matmul the CPU trainer runs on a frozen weight: the blocks' Conv1D layers
    (LoRA's included), ``x @ W``; and a bias-free ``nn.Linear`` LM head (GPT-2's, tied to the embedding), both
    ``h @ W^T`` (logits) and ``g @ W`` (their gradient) as nlg.kernels.head_loss computes them."""
    def frozen(w: torch.Tensor) -> bool:
        return (w.dim() == 2 and not w.requires_grad and w.dtype == torch.float32 and w.device.type == "cpu"
                and w.numel() > 0)

    blocks = getattr(getattr(model, "transformer", None), "h", None) or []
    for block in blocks:
        for module in block.modules():
            if isinstance(module, Conv1D) and frozen(module.weight):
                yield module.weight, False
    head = getattr(model, "lm_head", None)
    if type(head) is nn.Linear and head.bias is None and frozen(head.weight):
        yield head.weight, True
        yield head.weight, False


def pack_frozen(model: nn.Module) -> Packs:
    """Pack the frozen fp32 CPU weights of ``model`` that the trainer multiplies by (see ``_frozen_weights``);
    none when MKL's API is unavailable."""
    packs = Packs()
    if _load() is None:
        return packs
    for w, transpose in _frozen_weights(model):
        key = (id(w), transpose)
        if key in _PACKS:
            continue
        _PACKS[key] = _PackedMatrix(w, transpose)
        packs.finalizers.append(weakref.finalize(w, _drop, key))
        packs.ids.append(key)
    return packs


def _drop(key: tuple[int, bool]) -> None:
    pack = _PACKS.pop(key, None)
    if pack is not None:
        pack.close()


def has_pack(weight: torch.Tensor, transpose: bool = False) -> bool:
    """True when ``weight`` was packed (whether the pack is still usable is decided per call)."""
    return (id(weight), transpose) in _PACKS


def _usable(x: torch.Tensor, weight: torch.Tensor, transpose: bool = False) -> _PackedMatrix | None:
    pack = _PACKS.get((id(weight), transpose))
    if pack is None or weight.requires_grad or weight._version != pack.version or weight.data_ptr() != pack.data_ptr:
        return None
    if x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return None
    if x.dim() != 2 or x.shape[1] != pack.k or x.stride(1) != 1 or x.stride(0) < max(pack.k, 1):
        return None
    return pack


class _PackedMatmul(torch.autograd.Function):
    """``x @ W`` (or ``acc += x @ W`` in place) through the pack; gradient for ``x`` (and ``acc``) only."""

    @staticmethod
    def forward(ctx, x, weight, acc, pack):
        if acc is None:
            out = x.new_empty(x.shape[0], pack.o)
            pack.compute(x, out, 0.0)
        else:
            out = acc
            pack.compute(x, out, 1.0)
            ctx.mark_dirty(acc)
        ctx.save_for_backward(weight)
        ctx.has_acc = acc is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = grad.mm(weight.t()) if ctx.needs_input_grad[0] else None
        grad_acc = grad if ctx.has_acc and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_acc, None


def frozen_mm(x: torch.Tensor, weight: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight``, or ``acc.addmm_(x, weight)`` when ``acc`` is given: through the weight's pack when one is
    usable, else through torch (the same function either way)."""
    pack = _usable(x, weight)
    if pack is not None and (acc is None or (acc.is_contiguous() and acc.dtype == torch.float32)):
        return _PackedMatmul.apply(x, weight, acc, pack)
    if acc is None:
        return torch.mm(x, weight)
    return acc.addmm_(x, weight)


def mm_out(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``torch.mm(x, weight.t() if transpose else weight, out=out)`` without autograd, through the weight's pack
    when one is usable (the fused LM head and loss of nlg.kernels.head_loss call this)."""
    pack = _usable(x, weight, transpose)
    if pack is not None and out.dtype == torch.float32 and out.stride(1) == 1 and out.shape == (x.shape[0], pack.o):
        pack.compute(x, out, 0.0)
        return out
    return torch.mm(x, weight.t() if transpose else weight, out=out)
