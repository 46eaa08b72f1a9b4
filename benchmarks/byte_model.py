"""The device suite's byte model: the least traffic each pass of a row norm must make.

For an ``(R, H)`` input of ``e`` bytes per element (:data:`ITEMSIZE`),
parameters in the same dtype, ``P`` parameters (2 for layer norm: scale and
bias; 1 for RMS norm) and ``S`` float32 statistics per row (2: mean and
1/sigma; 1: 1/rms):

==================== ================================ ==========================
pass                 read                             written
==================== ================================ ==========================
forward              x ``R·H·e`` + params ``P·H·e``   y ``R·H·e``
forward saving stats as forward                       y ``R·H·e`` + stats ``4·S·R``
backward             x, dy ``2·R·H·e`` + scale        dx ``R·H·e`` + dparams
                     ``H·e`` + stats ``4·S·R``        ``P·H·e``
forward+backward     forward saving stats + backward  forward saving stats + backward
==================== ================================ ==========================

GB/s is (read + written) / time, and a pass's fraction of a copy's bandwidth
compares it with a copy of x (:func:`copy_bytes`: ``2·R·H·e``). Pure
functions of the case, the pass, the shape and the dtype's name.
"""

from __future__ import annotations

PASSES = {"forward": "forward", "forward_stats": "forward saving stats",
          "backward": "backward", "forward_backward": "forward+backward"}
"""The passes timed, by key, and how the reports name them."""
ITEMSIZE = {"f32": 4, "bf16": 2}
"""Bytes per element of each dtype timed."""
ROTATE_BYTES = 256 * 2**20
"""The bytes of x that the timings rotate among (see :func:`copies`)."""
MAX_COPIES = 16
"""The most copies of x that the timings rotate among."""


def pass_bytes(case: str, pass_: str, shape: tuple[int, int], dtype: str) -> dict[str, int]:
    """The bytes a pass must read and write (the table above).

    Args:
      case: ``"layer_norm"`` (scale and bias, two statistics per row) or ``"rms_norm"``
        (scale, one statistic per row).
      pass_: a key of :data:`PASSES`.
      shape: ``(rows, width)`` of x.
      dtype: a key of :data:`ITEMSIZE`: x, dy, y, the parameters and their gradients.

    Returns:
      ``{"read": bytes, "written": bytes}``.

    Raises:
      ValueError: an unknown case, pass or dtype.

    Example:
      >>> pass_bytes("layer_norm", "forward", (4, 8), "f32")
      {'read': 192, 'written': 128}
    """
    if case not in ("layer_norm", "rms_norm"):
        raise ValueError(f"pass_bytes: unknown case {case!r}; known: layer_norm, rms_norm")
    rows, width = shape
    e = itemsize(dtype)
    n_params, n_stats = (2, 2) if case == "layer_norm" else (1, 1)
    array, params, stats = rows * width * e, n_params * width * e, 4 * n_stats * rows
    forward = {"read": array + params, "written": array}
    saving = {"read": array + params, "written": array + stats}
    backward = {"read": 2 * array + width * e + stats, "written": array + params}
    if pass_ == "forward":
        return forward
    if pass_ == "forward_stats":
        return saving
    if pass_ == "backward":
        return backward
    if pass_ == "forward_backward":
        return {k: saving[k] + backward[k] for k in saving}
    raise ValueError(f"pass_bytes: unknown pass {pass_!r}; known: {list(PASSES)}")


def itemsize(dtype: str) -> int:
    """Bytes per element of ``dtype`` (a key of :data:`ITEMSIZE`).

    Raises:
      ValueError: an unknown dtype.
    """
    if dtype not in ITEMSIZE:
        raise ValueError(f"unknown dtype {dtype!r}; known: {list(ITEMSIZE)}")
    return ITEMSIZE[dtype]


def copy_bytes(shape: tuple[int, int], dtype: str) -> int:
    """Bytes a copy of x reads and writes.

    Example:
      >>> copy_bytes((4, 8), "bf16")
      128
    """
    return 2 * shape[0] * shape[1] * itemsize(dtype)


def copies(shape: tuple[int, int], dtype: str) -> int:
    """How many copies of x (and dy) the timings rotate among: enough for
    :data:`ROTATE_BYTES` of x, at least 1 and at most :data:`MAX_COPIES`, so that
    no call finds its input in a cache that an earlier call filled (an H100's L2
    holds 50 MB, an H200's 60).

    Example:
      >>> copies((4096, 1024), "f32"), copies((589824, 128), "bf16")
      (16, 2)
    """
    nbytes = shape[0] * shape[1] * itemsize(dtype)
    return min(MAX_COPIES, max(1, -(-ROTATE_BYTES // nbytes)))
