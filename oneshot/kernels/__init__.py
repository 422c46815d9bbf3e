"""oneshot.kernels: the Triton kernels of the three ops, one file per op (``triplane``, ``raymarch``,
``raster``), @triton.jit kernels and their host launchers only. Registration as ``oneshot::<op>_triton``
torch.library ops, autograd and argument checks live in :mod:`oneshot.ops` (``backend="triton"``).

Importing these modules imports triton; ``import oneshot`` does not (the ops import them on first use). For
Triton's CPU interpreter set ``TRITON_INTERPRET=1`` before that first use.
"""
