"""timm's training surface on every kind of network: no_weight_decay() names what timm's optimizer factory must not
decay, in the network's own parameter names."""
import pytest
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.optim import create_optimizer_v2

import stitchkit
from stitchkit.parallel import create_parallel


def _tiny_swin() -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1, 2, 1),
                           num_heads=(1, 1, 1, 1), num_classes=5)


def _decay_by_name(model: torch.nn.Module, **options) -> dict[str, float]:
    """The weight decay timm's optimizer factory gives each trainable parameter, by name."""
    optimizer = create_optimizer_v2(model, "adamw", weight_decay=0.05, **options)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}


def test_a_vit_baselines_tokens_are_not_decayed_as_in_timms_own_vit():
    ft = stitchkit.create_finetune_baseline("vit_pico_patch4_32", "1:3", input_size=32)
    assert ft.no_weight_decay() == {"0.owner.cls_token", "0.owner.pos_embed"}
    decay = _decay_by_name(ft)
    assert decay["0.owner.cls_token"] == decay["0.owner.pos_embed"] == 0.0
    assert decay["0.owner.patch_embed.proj.weight"] == 0.05
    probe = stitchkit.create_probe("vit_pico_patch4_32", num_classes=3, input_size=32)
    assert probe.no_weight_decay() == {"body.0.owner.cls_token", "body.0.owner.pos_embed"}


def test_names_inside_blocks_are_mapped_too():
    """Swin lists its blocks' position-bias tables, which the network holds as its own blocks, not in a view."""
    swin = _tiny_swin()
    tables = {n for n in swin.no_weight_decay()}
    ft = stitchkit.create_finetune_baseline(swin, "1:4", input_size=32, name="swin")
    ids = {id(p) for n, p in swin.named_parameters() if n in tables}
    kept = {n for n, p in ft.named_parameters() if id(p) in ids}
    assert kept and ft.no_weight_decay() == kept
    assert all(d == 0.0 for n, d in _decay_by_name(ft).items() if n in kept)
    stitch = stitchkit.create_stitched("resnet10t", _tiny_swin(), "1:3", input_size=32, unfreeze_last=1,
                                       adapter_norm="paper_code")
    assert stitch.no_weight_decay() and all(n.startswith("back.") for n in stitch.no_weight_decay())


def test_stitchkits_own_tokens_and_mixing_weights_are_not_decayed():
    stitch = stitchkit.create_stitched("resnet10t", "vit_pico_patch4_32", "1:3", input_size=32, prefix_in="learned",
                                       adapter_norm="paper_code")
    assert stitch.no_weight_decay() == {"bridge.learned_prefix"}
    decay = _decay_by_name(stitch)
    assert decay["bridge.learned_prefix"] == 0.0
    assert decay["bridge.adapters.0.adapter.block.conv1.weight"] == 0.05
    for fusion, name in (("gate", "fusion.logits"), ("sum", "fusion.weight")):
        parallel = create_parallel(["resnet10t", "resnet10t"], "resnet10t", "1:3", fusion=fusion, input_size=32,
                                   adapter_norm="paper_code")
        assert parallel.no_weight_decay() == {name}
        assert _decay_by_name(parallel)[name] == 0.0
    concat = create_parallel(["resnet10t", "vit_pico_patch4_32"], "vit_pico_patch4_32", "1:3", fusion="concat",
                             input_size=32, prefix_in="learned", adapter_norm="paper_code")
    # each chain's prefix tokens, and the (frozen) ViT front's own
    assert concat.no_weight_decay() == {"bridges.0.learned_prefix", "bridges.1.learned_prefix",
                                        "fronts.1.0.owner.cls_token", "fronts.1.0.owner.pos_embed"}


def test_stitchkits_optimizer_exempts_those_names_only_with_no_decay_norm_bias():
    from stitchkit.training.optim import param_groups

    ft = stitchkit.create_finetune_baseline("vit_pico_patch4_32", "1:3", input_size=32)
    names = {id(p): n for n, p in ft.named_parameters()}
    # the paper's recipe (the default): one group, everything decayed, as before
    (group,) = param_groups(ft, 0.05, no_decay_norm_bias=False)
    assert group["weight_decay"] == 0.05 and len(group["params"]) == len(list(ft.parameters()))
    decay, other = param_groups(ft, 0.05, no_decay_norm_bias=True)
    exempt = {names[id(p)] for p in other["params"]}
    assert other["weight_decay"] == 0.0 and {"0.owner.cls_token", "0.owner.pos_embed"} <= exempt
    assert all(p.dim() > 1 for p in decay["params"]) and len(decay["params"]) + len(other["params"]) == len(names)
    assert {names[id(p)] for p in decay["params"]}.isdisjoint(ft.no_weight_decay())
    # a whole timm model (mode=scratch) is read the same way
    vit = stitchkit.create_model("vit_pico_patch4_32", input_size=32)
    _, other = param_groups(vit, 0.05, no_decay_norm_bias=True)
    assert {id(vit.cls_token), id(vit.pos_embed)} <= {id(p) for p in other["params"]}
