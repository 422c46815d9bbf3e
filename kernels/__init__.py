"""oneshot.kernels: Triton kernels of the three ops (one file per op, kernels and launchers only; autograd and
registration live in oneshot.ops). Installed as ``oneshot.kernels``. The kernels land with the Triton issue;
until then ``backend="triton"`` raises a clear error.
"""
