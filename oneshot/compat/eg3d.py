"""EG3D's tri-plane renderer on oneshot's kernels, under EG3D's names (``training/volumetric_rendering/`` and
``training/triplane.py`` of NVlabs/eg3d and the code bases that copy it: GOHA, Next3D, ...).

Use it as a module::

    from oneshot.compat.eg3d import ImportanceRenderer, OSGDecoder, RaySampler
    renderer = ImportanceRenderer()          # EG3D's behaviour, quirks included
    rgb, depth, weights_sum = renderer(planes, decoder, ray_origins, ray_directions, rendering_kwargs)

or swap it into an EG3D-derived code base without editing its files::

    from oneshot.compat import eg3d
    eg3d.patch()                              # before the generator is built; or eg3d.patch(G) afterwards

By default the drop-in is EG3D: its plane matrices (xy, xz and zx: the third plane repeats x), the stochastic
depths and importance samples drawn from the global RNG in EG3D's order and shapes (so with the same RNG state it
renders the same images), the depth clamped over the whole batch, ``white_back``, ``density_noise``,
``disparity_space_sampling``. Switches for the corrected behaviour: ``plane_axes="goha"``, ``deterministic=True``,
``clip_to_box=True`` (keyword arguments of ``ImportanceRenderer`` and ``patch``). See docs/eg3d.md.

Under it, oneshot's ops: an EG3D-shaped decoder (the user's own ``OSGDecoder`` instance included) runs through
the fused ``oneshot.ops.render_triplane`` (no per-sample tensors kept for the backward), any other decoder through
``triplane_sample`` + the decoder + ``ray_march``.
"""

from __future__ import annotations

from .eg3d_decoder import FullyConnectedLayer, OSGDecoder, eg3d_decoder_reason
from .eg3d_patch import KNOWN_LAYOUTS, PatchError, patch, patched_modules, unpatch
from .eg3d_planes import (PLANE_AXES_EG3D, PLANE_AXES_GOHA, generate_planes, plane_matrices, project_onto_planes,
                          sample_from_planes)
from .eg3d_renderer import ImportanceRenderer, MipRayMarcher2, Settings
from .eg3d_sampling import (GENERATOR_KEYS, RENDERER_KEYS, EG3DCompatWarning, RaySampler, RenderingOptionsError,
                            parse_options)

__all__ = [
    # EG3D's names
    "ImportanceRenderer", "MipRayMarcher2", "RaySampler", "OSGDecoder", "FullyConnectedLayer", "sample_from_planes",
    "generate_planes", "project_onto_planes",
    # patching an existing code base
    "patch", "unpatch", "patched_modules", "KNOWN_LAYOUTS", "PatchError",
    # switches, options, helpers
    "Settings", "plane_matrices", "PLANE_AXES_EG3D", "PLANE_AXES_GOHA", "parse_options", "RENDERER_KEYS",
    "GENERATOR_KEYS", "RenderingOptionsError", "EG3DCompatWarning", "eg3d_decoder_reason",
]
