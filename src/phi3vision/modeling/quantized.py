"""Quantised layers of our own: only the CPU int8 linear (see ``phi3vision.quantization``).

Pure torch: the quantisation itself is torchao's, the matmul PyTorch's int8 kernel.
"""

from __future__ import annotations

import torch
from torch import nn


class Int8CpuLinear(nn.Module):
    """A linear layer with int8 weights and one scale per output row, for the CPU.

    ``weight`` is the int8 data (a frozen parameter, so parameter counts stay those of the
    checkpoint) and ``scale`` a bfloat16 buffer. Inputs of any float dtype are multiplied in
    bfloat16 by PyTorch's int8 weight-only kernel (``_weight_int8pack_mm``, what inductor
    lowers torchao's int8 pattern to; it is fast in bfloat16 only) and returned in their own
    dtype.
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.scale: torch.Tensor
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype, rows_per_step: int = 1024) -> Int8CpuLinear:
        """torchao's symmetric per-row int8 quantisation of ``linear``'s weight (any float
        dtype), ``rows_per_step`` rows at a time so that its float32 temporaries stay small;
        the bias, if any, at the model's ``dtype``."""
        from torchao.quantization import Int8Tensor, PerRow

        weight = linear.weight.detach()
        data = torch.empty(weight.shape, dtype=torch.int8)
        scale = torch.empty(weight.shape[0], dtype=torch.bfloat16)
        for start in range(0, weight.shape[0], rows_per_step):
            rows = slice(start, start + rows_per_step)
            quantized = Int8Tensor.from_hp(weight[rows].float(), PerRow())
            data[rows] = quantized.qdata
            scale[rows] = quantized.scale.reshape(-1)
        return cls(data, scale, None if linear.bias is None else linear.bias.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.weight, self.scale)
        out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"
