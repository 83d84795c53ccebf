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


def _lr_scales(model: torch.nn.Module, caplog) -> dict[str, float]:
    """The learning-rate scale timm's layer-wise decay gives each trainable parameter, by name; every trainable
    parameter in exactly one group, and timm warns of nothing."""
    with caplog.at_level("WARNING"):
        optimizer = create_optimizer_v2(model, "adamw", weight_decay=0.05, layer_decay=0.75)
    assert "no effect" not in caplog.text
    names = {id(p): n for n, p in model.named_parameters()}
    placed = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    assert sorted(placed) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    return {names[id(p)]: group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}


def _rises_along(scales: dict[str, float], parts: list[str]) -> list[float]:
    """Each part's one scale (every parameter under it shares it), in the order given: strictly increasing."""
    per_part = []
    for part in parts:
        found = {s for n, s in scales.items() if n.startswith(part + ".")}
        assert len(found) == 1, (part, found)
        per_part.append(found.pop())
    assert per_part == sorted(set(per_part)), per_part
    return per_part


def test_layer_decay_scales_a_baseline_block_by_block_to_the_head(caplog):
    ft = stitchkit.create_finetune_baseline("resnet10t", "1:3", input_size=32)
    scales = _rises_along(_lr_scales(ft, caplog), list(ft._modules))  # stem, every block, head
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.75 ** (len(ft) - 1))
    assert list(ft.group_matcher(coarse=True)) == ["stem", "blocks", "head"]


def test_layer_decay_scales_only_what_trains_in_a_stitch_probe_and_parallel_stitch(caplog):
    stitch = stitchkit.create_stitched("resnet10t", "vit_pico_patch4_32", "1:3", input_size=32, prefix_in="learned",
                                       unfreeze_last=1, num_classes=5, adapter_norm="paper_code")
    scales = _lr_scales(stitch, caplog)
    trained_back = [f"back.{i}" for i in stitch.trained_back]
    # the frozen front adds no group: the first adapter is the first step of the decay
    assert _rises_along(scales, ["bridge.adapters.0", "bridge.adapters.1", *trained_back]) == [
        0.75 ** 3, 0.75 ** 2, 0.75, 1.0]
    assert scales["bridge.learned_prefix"] == scales["bridge.adapters.1.adapter.block.conv1.weight"]
    assert list(stitch.group_matcher(coarse=True)) == ["adapters", "blocks", "head"]
    stitch.front[1].requires_grad_(True)  # asked again, it answers for what trains now
    assert list(stitch.group_matcher())[0] == "front"

    probe = stitchkit.create_probe("resnet10t", num_classes=5, input_size=32, unfreeze_last=2)
    assert _rises_along(_lr_scales(probe, caplog), ["top.0", "top.1", "top.2"]) == [0.75 ** 2, 0.75, 1.0]

    # chains of 2 and 1 adapters meet at the fusion: counted from their end, the last adapters share a scale
    parallel = create_parallel(["resnet10t", "resnet10t"], "resnet10t", ["1:3", "2:3"], fusion="gate",
                               input_size=32, num_classes=4, adapter_norm="paper_code")
    scales = _lr_scales(parallel, caplog)
    assert _rises_along(scales, ["bridges.0.adapters.0", "bridges.0.adapters.1", "fusion", "back.1"]) == [
        0.75 ** 3, 0.75 ** 2, 0.75, 1.0]
    assert scales["bridges.1.adapters.0.adapter.block.conv1.weight"] == 0.75 ** 2


def _step(model: torch.nn.Module, images: torch.Tensor):
    """One training forward and backward from the same start and random state: the loss, every gradient, every
    buffer, and the bytes autograd saved for backward outside checkpoints."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(images).logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}, sum(saved)


def _same_step_with_checkpointing(model: torch.nn.Module, size: int = 32) -> None:
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.train()
    start = {n: b.clone() for n, b in model.named_buffers()}
    plain = _step(model, images)
    with torch.no_grad():  # BatchNorm's running statistics back where they started
        for n, b in model.named_buffers():
            b.copy_(start[n])
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    checkpointed = _step(model, images)
    model.set_grad_checkpointing(False)
    assert torch.allclose(plain[0], checkpointed[0])
    assert plain[1].keys() == checkpointed[1].keys() and plain[1]
    for name, grad in plain[1].items():
        assert torch.allclose(grad, checkpointed[1][name], atol=1e-6), name
    for name, buffer in plain[2].items():  # updated once, not once more by the second run
        assert torch.equal(buffer, checkpointed[2][name]), name
    assert checkpointed[3] < plain[3] / 2  # the activations went


def test_grad_checkpointing_keeps_a_baselines_gradients_and_statistics():
    torch.manual_seed(0)
    _same_step_with_checkpointing(stitchkit.create_finetune_baseline("resnet10t", "1:3", input_size=32))
    vit = stitchkit.create_model("vit_pico_patch4_32", input_size=32, drop_path_rate=0.1, drop_rate=0.1)
    _same_step_with_checkpointing(stitchkit.create_finetune_baseline(vit, "1:3", input_size=32))  # dropout replayed


def test_grad_checkpointing_reaches_the_frozen_blocks_after_the_adapters():
    torch.manual_seed(0)
    stitch = stitchkit.create_stitched("resnet10t", "vit_pico_patch4_32", "1:4", input_size=32, prefix_in="learned",
                                       adapter_norm="paper_code")
    assert not any(p.requires_grad for p in stitch.back.parameters())
    _same_step_with_checkpointing(stitch)
    # the frozen back's blocks hold activations for backward too: checkpointed, they hold less
    images = torch.randn(4, 3, 32, 32)
    stitch.set_grad_checkpointing(True)
    everything = _step(stitch, images)[3]
    stitch.back.grad_checkpointing = False
    assert _step(stitch, images)[3] > everything
    stitch.set_grad_checkpointing(False)
    _same_step_with_checkpointing(stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", input_size=32,
                                                            unfreeze_last=1, num_classes=5))
    _same_step_with_checkpointing(stitchkit.create_probe("resnet10t", num_classes=5, input_size=32, unfreeze_last=1))
    _same_step_with_checkpointing(create_parallel(["resnet10t", "vit_pico_patch4_32"], "resnet10t", "1:3",
                                                  fusion="gate", input_size=32, num_classes=5))


def test_grad_checkpointing_compiles_into_one_graph_with_the_same_step():
    """train.compile with train.grad_checkpointing: torch.compile traces the checkpoints (a compiled graph updates
    BatchNorm's statistics once by itself)."""
    torch.manual_seed(0)
    ft = stitchkit.create_finetune_baseline("resnet10t", "1:3", input_size=32)
    images = torch.randn(4, 3, 32, 32)
    plain = _step(ft.train(), images)
    torch.manual_seed(0)
    again = stitchkit.create_finetune_baseline("resnet10t", "1:3", input_size=32).train()
    again.set_grad_checkpointing(True)
    # aot_eager: Dynamo traces the checkpoints and AOTAutograd functionalises the buffer updates as inductor is
    # given them (inductor's own C++ build of the graph took 50 s of the quick suite; test_training compiles with it)
    compiled = torch.compile(again, fullgraph=True, backend="aot_eager")
    loss = compiled(images).logsumexp(-1).mean()
    loss.backward()
    assert torch.allclose(loss, plain[0], atol=1e-5)
    for name, p in again.named_parameters():
        assert torch.allclose(p.grad, plain[1][name], atol=1e-5), name
    for name, b in again.named_buffers():  # moved once, as by the plain step
        assert torch.allclose(b.float(), plain[2][name].float(), atol=1e-5), name


@pytest.mark.parametrize("name, expected", [
    ("torchvision:vit_b_16", {"0.class_token", "0.encoder.pos_embedding"}),
    ("torchvision:swin_t", {f"{i}.attn.relative_position_bias_table" for i in (5, 6)}),
])
def test_torchvision_transformer_embeddings_are_not_decayed(name, expected):
    """torchvision's models declare no no_weight_decay(); the embeddings its reference script exempts
    (--transformer-embedding-decay) are exempt, in the network's names, wherever the network holds them."""
    torch.manual_seed(0)
    net = stitchkit.create_finetune_baseline(name, "1:4", input_size=224)
    found = net.no_weight_decay()
    assert found == expected
    assert all(d == 0.0 for n, d in _decay_by_name(net).items() if n in found)
