"""Row-wise evaluation that does not depend on a row's batch-mates, bit for bit.

A CPU kernel can round a row differently depending on where it sits in a batch
(measured on this project's machines, MKL and PyTorch's vectorised kernels,
float32 and float64):

* vectorised element-wise kernels (exp, expm1, pow, ...) compute the last
  `numel mod 32` elements of a tensor, and of each thread's share of it, with
  scalar code that rounds differently;
* MKL's matrix products take another path for fewer than 4 rows.

So every per-sample evaluation is done on a batch padded to a whole number of
`block()` rows (copies of the last row, whose results are dropped): then no
element-wise tail or thread boundary falls inside a real row, and a row's result
is the same alone, in any batch and at any position. A third effect, products
with fewer than 12 output columns rounding rows by their position, is avoided
where the products are made (`gfe.models.LatentLinear`). The guarantee holds for
one or two intra-op threads; with more, a thread's share can end inside a row
(docs/reliability.md, "Bit-identical encodings").
"""

from __future__ import annotations

import contextlib

import torch

BLOCK = 32  # elements per vectorised step of the widest kernels (two AVX-512 registers of float32)


_padding = [True]


@contextlib.contextmanager
def padding(enabled: bool):
    """Turn the padding off (or on) inside the block, to measure what it costs
    (`gfe bench encode --padding-cost`); without it encodings depend on batch-mates
    in their last bits, which flows can amplify."""
    before = _padding[0]
    _padding[0] = enabled
    try:
        yield
    finally:
        _padding[0] = before


def block() -> int:
    """Rows to pad a batch to a multiple of: with two threads each thread's share of
    a padded tensor must itself be a whole number of vectorised steps."""
    if not _padding[0]:
        return 1
    return BLOCK if torch.get_num_threads() == 1 else 2 * BLOCK


def pad(tensor: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """`tensor` with copies of its last row appended up to `rows` rows."""
    if tensor is None or len(tensor) in (0, rows):
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(rows - len(tensor), *tensor.shape[1:])])


def padded_rows(n: int) -> int:
    """`n` rounded up to a whole number of blocks."""
    size = block()
    return -(-n // size) * size


def rowwise(fn, *tensors: torch.Tensor | None):
    """`fn(*tensors)` evaluated on the tensors padded to whole blocks of rows, and
    its outputs (a tensor or a tuple of them) cut back to the real rows."""
    n = len(next(t for t in tensors if t is not None))
    rows = padded_rows(n)
    out = fn(*(pad(t, rows) for t in tensors))
    return tuple(o[:n] for o in out) if isinstance(out, tuple) else out[:n]
