"""Encoder layer options on megatron-core's ``TransformerLayer``: BERT's post-norm
residual order and ALBERT's cross-layer parameter sharing.

Post-norm (BERT, ALBERT): ``x = LN_a(x + attn(x)); x = LN_m(x + mlp(x))``;
megatron's layer is pre-norm (``x + attn(LN(x))``), so :class:`PostNormLayer`
builds it without the pre-norms and applies its own two norms after the
residual adds (the block then has no final norm).

Sharing (ALBERT): every layer uses the first layer's attention and/or MLP
sublayer, each with its LayerNorm. Layers after the first are built with
``IdentityOp`` in the shared slots (nothing is allocated twice) and
:func:`tie_shared_layers` then points those slots at the first layer's
modules. Each layer keeps its own ``layer_number``; ``parameters()`` lists a
shared weight once, ``state_dict()`` under every layer that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from ptobj.models.norms import SequenceParallelNorm

# the slots of one layer that make up each shareable part, by norm position
PART_SLOTS = {
    "pre": {"attention": ("input_layernorm", "self_attention"), "ffn": ("pre_mlp_layernorm", "mlp")},
    "post": {"attention": ("self_attention", "post_attention_layernorm"), "ffn": ("mlp", "post_mlp_layernorm")},
}
SHARED_PARTS = {"none": (), "attention": ("attention",), "ffn": ("ffn",), "all": ("attention", "ffn")}


@dataclass
class PostNormLayerSubmodules(TransformerLayerSubmodules):
    post_attention_layernorm: Union[ModuleSpec, type] = IdentityOp
    post_mlp_layernorm: Union[ModuleSpec, type] = IdentityOp


class PostNormLayer(TransformerLayer):
    """megatron's layer with BERT's residual order (norms after the residual adds)."""

    def __init__(self, config, submodules: PostNormLayerSubmodules, layer_number: int = 1, **kwargs):
        super().__init__(config, submodules, layer_number, **kwargs)
        norm = dict(config=config, hidden_size=config.hidden_size, eps=config.layernorm_epsilon)
        self.post_attention_layernorm = build_module(submodules.post_attention_layernorm, **norm)
        self.post_mlp_layernorm = build_module(submodules.post_mlp_layernorm, **norm)

    def _forward_attention(self, *args, **kwargs):
        hidden, context = super()._forward_attention(*args, **kwargs)
        return self.post_attention_layernorm(hidden), context

    def _forward_post_mlp(self, mlp_output_with_bias, residual):
        return self.post_mlp_layernorm(super()._forward_post_mlp(mlp_output_with_bias, residual))


def post_norm(spec: ModuleSpec) -> ModuleSpec:
    """A pre-norm layer spec turned post-norm: same sublayers, norms moved after the adds."""
    sub = spec.submodules
    fields = {name: getattr(sub, name) for name in TransformerLayerSubmodules.__dataclass_fields__}
    fields.update(input_layernorm=IdentityOp, pre_mlp_layernorm=IdentityOp,
                  post_attention_layernorm=SequenceParallelNorm, post_mlp_layernorm=SequenceParallelNorm)
    return ModuleSpec(module=PostNormLayer, params=spec.params, submodules=PostNormLayerSubmodules(**fields))


def shared_slots(norm_position: str, share_layers: str) -> tuple[str, ...]:
    """The slots every layer takes from the first one."""
    return tuple(slot for part in SHARED_PARTS[share_layers] for slot in PART_SLOTS[norm_position][part])


def layer_specs(spec: ModuleSpec, num_layers: int, slots: tuple[str, ...]) -> list[ModuleSpec]:
    """``num_layers`` specs; after the first, the shared ``slots`` are placeholders."""
    if not slots or num_layers <= 1:
        return [spec] * num_layers
    later = ModuleSpec(module=spec.module, params=spec.params,
                       submodules=replace(spec.submodules, **{slot: IdentityOp for slot in slots}))
    return [spec] + [later] * (num_layers - 1)


def tie_shared_layers(layers, slots: tuple[str, ...]) -> None:
    """Point every later layer's shared ``slots`` at the first layer's modules."""
    for layer in list(layers)[1:]:
        for slot in slots:
            setattr(layer, slot, getattr(layers[0], slot))
