"""SegFormer checkpoint names across ``transformers`` versions.

``transformers`` 5 renamed every SegFormer parameter (``encoder.block.0.0.attention.self.query`` became
``stages.0.blocks.0.attention.q_proj``, ...). GOHA's checkpoint, and oneshot's, use the transformers-4.x names.
:class:`SegFormerKeyMap` maps between the installed version's names ("native") and the 4.x ones ("canonical") for
one ``SegformerModel``, checked to be exact, and supplies the three state-dict hooks with which
:class:`~oneshot.models.SegFormerEncoder` emits and accepts canonical names whatever version is installed.
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["SUPPORTED_TRANSFORMERS", "SegFormerKeyMap", "canonical_encoder_keys", "to_canonical"]

#: The ``transformers`` versions whose SegFormer layouts were checked against GOHA's checkpoint names.
SUPPORTED_TRANSFORMERS = ">=4.40,<6"


def canonical_encoder_keys(cfg) -> list[str]:
    """Every state-dict key of a transformers-4.x ``SegformerModel`` built from `cfg` (a SegformerConfig), in its
    order."""
    n = cfg.num_encoder_blocks
    keys = [f"encoder.patch_embeddings.{i}.{m}.{p}" for i in range(n) for m in ("proj", "layer_norm")
            for p in ("weight", "bias")]
    for i in range(n):
        for j in range(cfg.depths[i]):
            mods = ["layer_norm_1", "attention.self.query", "attention.self.key", "attention.self.value"]
            if cfg.sr_ratios[i] > 1:
                mods += ["attention.self.sr", "attention.self.layer_norm"]
            mods += ["attention.output.dense", "layer_norm_2", "mlp.dense1", "mlp.dwconv.dwconv", "mlp.dense2"]
            keys += [f"encoder.block.{i}.{j}.{m}.{p}" for m in mods for p in ("weight", "bias")]
    keys += [f"encoder.layer_norm.{i}.{p}" for i in range(n) for p in ("weight", "bias")]
    return keys


# transformers>=5 name -> 4.x name. Stage containers first, then the pieces inside a block.
_STAGE_RENAMES = [
    (re.compile(r"^stages\.(\d+)\.patch_embeddings\."), r"encoder.patch_embeddings.\1."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), r"encoder.block.\1.\2."),
    (re.compile(r"^stages\.(\d+)\.layer_norm\."), r"encoder.layer_norm.\1."),
]
_BLOCK_RENAMES = [
    (re.compile(r"\.layernorm_before\."), ".layer_norm_1."),
    (re.compile(r"\.layernorm_after\."), ".layer_norm_2."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.self.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.self.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.self.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.attention\.sequence_reduction\.sequence_reduction\."), ".attention.self.sr."),
    (re.compile(r"\.attention\.sequence_reduction\.layer_norm\."), ".attention.self.layer_norm."),
    (re.compile(r"\.mlp\.fc1\."), ".mlp.dense1."),
    (re.compile(r"\.mlp\.fc2\."), ".mlp.dense2."),
]


def to_canonical(native: str) -> str:
    """A SegformerModel parameter name of any supported transformers version as its 4.x name."""
    for pattern, repl in _STAGE_RENAMES + _BLOCK_RENAMES:
        native = pattern.sub(repl, native)
    return native


class SegFormerKeyMap:
    """The name map of one ``SegformerModel`` (held by a module under the attribute ``segformer``), and the
    state-dict hooks that translate it: ``state_dict()`` emits 4.x names in 4.x order, ``load_state_dict()`` takes
    them and reports missing keys and size mismatches with them. Other keys pass untouched.

    Attributes:
        native_to_canonical, canonical_to_native: the installed version's names <-> the 4.x names.
        canonical_order: the 4.x names in a 4.x model's order.
        identity: True when the installed version uses the 4.x names (then the hooks do nothing).
    """

    def __init__(self, model: nn.Module, cfg):
        native = list(model.state_dict(keep_vars=True))
        canonical = canonical_encoder_keys(cfg)
        n2c = {k: to_canonical(k) for k in native}
        if sorted(n2c.values()) != sorted(canonical):
            import transformers

            odd = sorted(set(n2c.values()) ^ set(canonical))[:6]
            raise RuntimeError(
                f"transformers {transformers.__version__} names SegformerModel's parameters in a way oneshot cannot "
                f"map to its checkpoint names (e.g. {odd}); supported: transformers{SUPPORTED_TRANSFORMERS}")
        self.native_to_canonical = n2c
        self.canonical_to_native = {c: n for n, c in n2c.items()}
        self.canonical_order = canonical
        self.identity = all(n == c for n, c in n2c.items())
        self._loading = None  # (prefix, error_msgs) of the load in progress, between the pre- and post-hook

    @staticmethod
    def register(module: nn.Module) -> None:
        """Install the three hooks on `module`: its ``segformer`` attribute is the mapped model, its ``key_map``
        attribute this map. (Module-level functions that look the map up, so the module deep-copies and pickles.)"""
        module.register_state_dict_post_hook(_emit_canonical)
        module.register_load_state_dict_pre_hook(_accept_canonical)
        module.register_load_state_dict_post_hook(_report_canonical)

    def emit_canonical(self, state_dict, prefix: str) -> None:
        """state_dict post-hook: rename the ``segformer.*`` keys to 4.x names, in 4.x order."""
        if self.identity:
            return
        seg = prefix + "segformer."
        n2c = self.native_to_canonical
        own = [k for k in state_dict if k.startswith(prefix)]  # the tail of state_dict: saved just now
        items = [(k, state_dict.pop(k)) for k in own]
        renamed = {n2c[k[len(seg):]]: v for k, v in items if k.startswith(seg) and k[len(seg):] in n2c}
        emitted = False
        for k, v in items:
            if k.startswith(seg) and k[len(seg):] in n2c:
                if not emitted:
                    state_dict.update((seg + c, renamed[c]) for c in self.canonical_order)
                    emitted = True
            else:
                state_dict[k] = v

    def accept_canonical(self, state_dict, prefix: str, error_msgs: list) -> None:
        """load_state_dict pre-hook: rename 4.x names to the installed version's."""
        self._loading = (prefix, error_msgs)
        if self.identity:
            return
        seg = prefix + "segformer."
        for k in [k for k in state_dict if k.startswith(seg)]:
            native = self.canonical_to_native.get(k[len(seg):])
            if native is not None:
                state_dict[seg + native] = state_dict.pop(k)

    def report_canonical(self, incompatible_keys) -> None:
        """load_state_dict post-hook: missing keys and size mismatches are reported with 4.x names."""
        loading, self._loading = self._loading, None
        if self.identity or loading is None:
            return
        prefix, error_msgs = loading
        seg = prefix + "segformer."
        n2c = self.native_to_canonical

        def canon(key: str) -> str:
            return seg + n2c[key[len(seg):]] if key.startswith(seg) and key[len(seg):] in n2c else key

        incompatible_keys.missing_keys[:] = [canon(k) for k in incompatible_keys.missing_keys]
        error_msgs[:] = [re.sub(r"(?<=^size mismatch for )(\S+)(?=:)", lambda m: canon(m.group(1)), msg)
                         for msg in error_msgs]


def _emit_canonical(module, state_dict, prefix, local_metadata) -> None:
    module.key_map.emit_canonical(state_dict, prefix)


def _accept_canonical(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                      error_msgs) -> None:
    module.key_map.accept_canonical(state_dict, prefix, error_msgs)


def _report_canonical(module, incompatible_keys) -> None:
    module.key_map.report_canonical(incompatible_keys)
