"""The model as blocks, bottom-up, then the head: what gradual unfreezing unfreezes one at a time and what
layer-wise rates decay over.

* ResNets (torchvision, timm) and the CBR models: the blocks ``domgen.models.init.model_blocks`` names for
  ``transfer:K`` (ResNets: stem = conv1 + bn1, layer1 .. layer4), so both features speak of one thing.
* A backbone with a stack of blocks (timm's ViTs and DeiTs: ``blocks``; ConvNeXt: ``stages``; VGG and
  DenseNet: ``features``): every parameter and module before the stack is the ``stem``, each element of
  the stack that holds parameters is a block (``blocks.0`` ...), except that a BatchNorm joins the block
  before it (VGG-19-BN: conv + BN pairs; DenseNet-121: its dense blocks and transitions), and what follows
  the stack (the final norm, VGG's pre-logits MLP) joins the last one.
* Anything else: each direct child of ``g`` that holds parameters (and each parameter set on ``g`` itself)
  is a block, in registration order (the forward order in every torchvision/timm model we use).

The head ``h`` is the last block, named ``head``. Every trainable tensor of the model is in exactly one block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

STACKS = ("blocks", "stages", "features")  # timm's names for a backbone's stack of blocks (features: VGG, DenseNet)


@dataclass
class Block:
    name: str
    modules: list[nn.Module] = field(default_factory=list)  # what train_mode may put in evaluation mode
    params: list[nn.Parameter] = field(default_factory=list)


def model_blocks(model: nn.Module) -> list[Block]:
    """``model.g``'s blocks bottom-up, then ``head`` (``model.h``)."""
    blocks = _backbone_blocks(model.g)
    blocks.append(Block("head", [model.h], list(model.h.parameters())))
    seen = [id(p) for b in blocks for p in b.params]
    assert len(seen) == len(set(seen)) == len(list(model.parameters())), "every parameter in exactly one block"
    return blocks


def _named_units(g: nn.Module) -> list[tuple[str, nn.Module | None, list[nn.Parameter]]]:
    """g's direct parameters and children in registration order, each as (name, module or None, params)."""
    units = [(name, None, [p]) for name, p in g.named_parameters(recurse=False)]
    units += [(name, m, list(m.parameters())) for name, m in g.named_children()]
    return units


def _backbone_blocks(g: nn.Module) -> list[Block]:
    from domgen.errors import ConfigError
    from domgen.models.init import model_blocks as resnet_blocks

    try:
        named = resnet_blocks(g)  # [(block, state-dict prefixes)] for ResNets and CBR models
    except ConfigError:
        named = None
    units = _named_units(g)
    if named is not None:
        owner = {prefix.rstrip("."): block for block, prefixes in named for prefix in prefixes}
        blocks = {block: Block(block) for block, _ in named}
        for name, module, params in units:
            if params:  # parameter-free modules (relu, pools, fc = Identity) need no block
                block = blocks[owner.get(name, named[-1][0])]  # an unnamed extra joins the last block
                block.modules += [module] if module is not None else []
                block.params += params
        return list(blocks.values())
    stack = next((s for s in STACKS if isinstance(getattr(g, s, None), (nn.Sequential, nn.ModuleList))), None)
    if stack is None:
        return [Block(name, [m] if m is not None else [], params) for name, m, params in units if params]
    out: list[Block] = [Block("stem")]
    after = False
    for name, module, params in units:
        if name == stack:
            out += _stack_blocks(stack, module)
            after = True
            continue
        target = out[-1] if after else out[0]  # the tail (final norm) joins the last block
        target.modules += [module] if module is not None else []
        target.params += params
    return [b for b in out if b.params or b.name != "stem"]


def _stack_blocks(stack: str, modules: nn.Module) -> list[Block]:
    """The stack's elements that hold parameters, each a block; a BatchNorm joins the block before it."""
    out: list[Block] = []
    for i, m in modules.named_children():
        params = list(m.parameters())
        if not params:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and out:
            out[-1].modules.append(m)
            out[-1].params += params
        else:
            out.append(Block(f"{stack}.{i}", [m], params))
    return out
