"""Cut any traceable model by splitting its graph, with no per-model table.

Hand-written families (:mod:`stitchkit.zoo.families`) lay out the models they know from their stage containers.
Every other model is exported with :func:`torch.export.export` (non-strict, for the input size it will see, batch
size dynamic) and its graph is cut where a cut is possible and meaningful:

1. **Where a cut is possible.** A node of the graph is a *cut node* when the one tensor it produces is all that later
   operations need: no other activation computed before it is used after it. Weights, buffers, constants and the
   batch size do not count (every part can read them). Dense connections (DenseNet's concatenations inside a dense
   block) and multi-branch stages (HRNet) have no cut node inside them, which is why they cannot be cut there.
2. **Which cut nodes are block boundaries.** The model's module tree says where blocks are: starting at the model, a
   *group* (a plain ``Sequential``/``ModuleList``/``ModuleDict`` with repeated member classes, or a module that holds
   such a container, like a timm stage with its ``blocks``) is opened, anything else is a block. Blocks of one class
   are cut alike: a class that holds a container is a block wherever one of its modules is, that is, ends at a cut
   node while nothing inside it does (:func:`_rule_boundaries`; torchvision's InvertedResidual where it adds its input
   back, so it is a block everywhere, also where a strided one could be cut between its convolutions). A cut node that
   is the last operation of a block inside a group is a block boundary. Modules that hang directly off the model (a
   stem convolution, a max-pool, the final norm) are stem or head, never blocks (but one that holds a container and is
   a block by its class, as Inception-ResNet's reduction block ``mixed_6a``), and so are the members of the model's
   trunk (a direct child, the only one of its class, that holds the blocks beside members of its own: torchvision
   ViT's ``encoder``) before its first block or after its last one (:func:`_trunk_member`); neither is anything inside
   the model's classifier head (:func:`_heads`), however it is built. A block without parameters (an activation, a
   pooling) joins the block before it, or the stem when no block came before it.
3. **Stages by reduction.** Each boundary's tensor gives its layout (NCHW, NHWC, or tokens with prefix tokens) and its
   reduction (input size / feature size). Blocks at reductions below 4 join the stem; the remaining reductions are the
   stages. Four reductions (4x, 8x, 16x, 32x) are the paper's four stages. One reduction (ViT-like, Mixer, ConvMixer:
   isotropic) is split into four equal groups of blocks, as for ViT. More than four: the deepest ones join stage 4.
   Fewer than four (but more than one): the stage with most blocks is halved until there are four. Of the grouping
   rules (``_RULES``), the first whose four stages all hold more than one block wins, else the one whose stages do
   most often (:func:`_find_stages`): a stage of one block has its first block for its end.

The parts are :class:`torch.fx.GraphModule` segments of the exported graph that use the model's own parameters and
buffers (shared, not copied). What this costs, compared with a hand-written family:

* the parts are specialised to one input size (the model's anatomy is exported per size);
* the graph was exported in eval mode, so in the parts BatchNorm uses its running statistics and dropout is off
  even when a part is trained (fine-tuning baseline). Frozen parts, the usual case, behave exactly as the model.
"""
from __future__ import annotations

import math
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..errors import StitchkitError
from ..formats import Format
from .anatomy import Anatomy, has_class_token, input_channels, model_device, split_evenly

_PLAIN_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class GraphSplitError(StitchkitError):
    """A model whose graph cannot be cut into four stages (the message says why)."""


@dataclass
class _Boundary:
    node: fx.Node
    block: str  # qualified name of the block that ends here
    format: Format
    reduction: int
    prefix: int  # prefix tokens of a token layout


# --- the model's module tree ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """Which containers open a group of blocks (rule 2). The rule that finds four stages of more than one block
    each, or the most such stages, wins (_find_stages)."""

    subclasses: bool = False  # subclasses of the plain containers count too
    composite: bool = False  # only containers whose members have members (blocks, not a conv-norm-act sequence)


# Plain containers; then their subclasses too: a subclass usually has its own forward (DenseNet's dense block
# concatenates its layers' outputs) and is one block, but PiT's ``SequentialTuple`` of stages passes (tokens, class
# token) pairs between stages with one token tensor inside, and torchvision's RegNet keeps a stage's blocks in
# ``AnyStage``, a Sequential by another name; then only containers of composite members, for models
# whose blocks hold conv-norm-act Sequentials in parallel branches (torchvision's ShuffleNetV2: its branches would
# otherwise be taken for groups, and their convolutions for blocks).
_RULES = (_Rule(), _Rule(subclasses=True), _Rule(composite=True))


def _is_plain_group(module: nn.Module, rule: _Rule = _RULES[0]) -> bool:
    """A plain container whose members repeat a class (blocks), not a one-off sequence (conv, norm) of a stem."""
    if type(module) not in _PLAIN_CONTAINERS and not (rule.subclasses and isinstance(module, _PLAIN_CONTAINERS)):
        return False
    members = list(module.children())
    if rule.composite and not all(any(True for _ in m.children()) for m in members):
        return False
    counts = Counter(type(m) for m in members)
    return bool(counts) and max(counts.values()) >= 2


def _is_group(name: str, modules: dict[str, nn.Module], rule: _Rule = _RULES[0],
              closed: frozenset[str] = frozenset()) -> bool:
    """Whether the module ``name`` is opened as a group (the model always is; one of ``closed`` never is)."""
    if name == "":
        return True
    if name in closed:
        return False
    module = modules[name]
    if _is_plain_group(module, rule):
        return True
    # A stage object that holds its blocks in a container (timm's ``stages.N`` with ``downsample`` and ``blocks``).
    return type(module) not in _PLAIN_CONTAINERS and any(
        _is_plain_group(child, rule) and f"{name}.{child_name}" not in closed
        for child_name, child in module.named_children())


def _block_of(stack: list[str], modules: dict[str, nn.Module], rule: _Rule = _RULES[0],
              closed: frozenset[str] = frozenset(), opened: set[str] | None = None) -> str | None:
    """The block a node belongs to: open groups from the model down along the node's module stack (adding the
    groups opened, other than the model, to ``opened``).

    Returns ``None`` for code that runs in a group's own forward (a ViT's position embedding), ``""`` never.
    """
    current, depth = "", 0
    while _is_group(current, modules, rule, closed):
        if current and opened is not None:
            opened.add(current)
        if depth == len(stack):
            return None
        current = stack[depth]
        depth += 1
    return current


def _repeated_children(model: nn.Module) -> set[str]:
    """Direct children of the model that are blocks although no container holds them: runs of two or more
    consecutive children of one composite class (DLA's ``level2``..``level5``, Inception's ``Mixed_5b``..``5d``).
    Plain containers do not count: a ``stem`` and a ``stages`` Sequential side by side are not two blocks."""
    children = list(model.named_children())
    found = set()
    for (a, ma), (b, mb) in zip(children, children[1:]):
        if (type(ma) is type(mb) and type(ma) not in _PLAIN_CONTAINERS and any(True for _ in ma.children())
                and any(True for _ in ma.parameters())):
            found.update((a, b))
    return found


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _heads(g: "_Graph") -> set[str]:
    """The qualified names of the modules that make up the model's classifier head: nothing inside them is a block.

    A direct child of the model is never a block, but rule 2 can still reach its members. Where the model's own
    ``forward_head`` calls them one by one (timm's MetaFormer: ``self.head.global_pool``, ``self.head.norm``), the
    head itself never runs as a module, so the graph's module stacks start at ``head.global_pool``, which reads as
    a block of the model's own group. Where the head holds a container of repeated classes (timm's EfficientViT:
    ``head.classifier`` with two Linears), the head reads as a stage holding blocks, and ``head.in_conv`` as one of
    them. Either way the head's pooling, norm or convolution became stage 4's last blocks, and stage 4's cuts
    carried pooled features or ran past where the model's own ``forward_features`` ends.

    The classifier is what the model declares (timm: ``get_classifier()``, found by identity, and
    ``pretrained_cfg["classifier"]``); in a model that declares none (torchvision) it is found in the graph: the
    innermost module of the last operation run inside a module with weights of its own, where that operation gives
    a vector per image (logits; an encoder without a classifier ends in a map or tokens, and nothing is taken). The
    head is the classifier's outermost ancestor that does not also run the model's first operation: ``head`` for
    ``head.classifier.4``, ``net.head`` where a child ``net`` wraps the whole network."""
    model = g.model
    modules = dict(model.named_modules(remove_duplicate=False))
    names = {id(m): n for n, m in modules.items()}
    classifiers: set[str] = set()
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            declared = get_classifier()
        except Exception:  # a model whose get_classifier fails (no classifier): nothing declared
            declared = None
        for module in declared if isinstance(declared, (tuple, list)) else (declared,):
            if isinstance(module, nn.Module) and names.get(id(module)):
                classifiers.add(names[id(module)])
    cfg = getattr(model, "pretrained_cfg", None)
    configured = cfg.get("classifier") if isinstance(cfg, dict) else None
    for name in (configured,) if isinstance(configured, str) else configured or ():
        if isinstance(name, str) and name in modules:
            classifiers.add(name)
    computing = []  # (node, module stack) of each operation on the image that runs inside a module, in order
    for node in g.nodes:
        stack = [m for m in g.stack(node) if m in modules]
        if node.op == "call_function" and node not in g.free and stack:
            computing.append((node, stack))
    if not classifiers:
        for node, stack in reversed(computing):
            if not any(True for _ in modules[stack[-1]].parameters(recurse=False)):
                continue
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dim() == 2:
                classifiers.add(stack[-1])
            break
    first = computing[0][1][-1].split(".") if computing else []
    heads = set()
    for name in classifiers:
        path = name.split(".")
        shared = 0
        while shared < min(len(path), len(first)) and path[shared] == first[shared]:
            shared += 1
        if shared < len(path):
            heads.add(".".join(path[: shared + 1]))
    return heads


def _inside(name: str, modules: set[str]) -> bool:
    """Whether the module ``name`` is one of ``modules`` or inside one of them."""
    return any(name == m or name.startswith(m + ".") for m in modules)


# --- layouts ------------------------------------------------------------------------------------------------------


def _grid_reduction(h: int, w: int, hw: tuple[int, int]) -> int | None:
    """The reduction ``r`` with ``(h, w) == ceil(hw / r)``, if there is one."""
    if h <= 0 or w <= 0:
        return None
    r = max(1, round(hw[0] / h))
    for candidate in (r, r + 1, r - 1):
        if candidate >= 1 and math.ceil(hw[0] / candidate) == h and math.ceil(hw[1] / candidate) == w:
            return candidate
    return None


def _layout(shape: tuple[int, ...], hw: tuple[int, int], prefix_hint: int | None) -> tuple[Format, int, int] | None:
    """``(format, reduction, prefix tokens)`` of a feature of ``shape`` (batch excluded), or None if not spatial."""
    if len(shape) == 3:
        c, h, w = shape
        r = _grid_reduction(h, w, hw)
        if r is not None:
            return Format.NCHW, r, 0
        r = _grid_reduction(c, h, hw)
        if r is not None:
            return Format.NHWC, r, 0
        return None
    if len(shape) == 2:
        length = shape[0]
        prefixes = [prefix_hint] if prefix_hint is not None else []
        for prefix in prefixes + [p for p in range(0, 17) if p != prefix_hint]:
            patches = length - prefix
            if patches <= 0:
                break
            r = max(1, round(math.sqrt(hw[0] * hw[1] / patches)))
            for candidate in (r, r + 1, r - 1):
                if candidate >= 1 and math.ceil(hw[0] / candidate) * math.ceil(hw[1] / candidate) == patches:
                    return Format.NLC, candidate, prefix
    return None


def _node_layout(node: fx.Node, hw: tuple[int, int], prefix_hint: int | None) -> tuple[Format, int, int] | None:
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dim() < 3:
        return None
    return _layout(tuple(int(s) for s in value.shape[1:]), hw, prefix_hint)


# --- export and cut nodes -----------------------------------------------------------------------------------------


def _export(model: nn.Module, hw: tuple[int, int]):
    x = torch.randn(2, input_channels(model), *hw, device=model_device(model))
    batch = torch.export.Dim("batch", min=1)
    was_training = model.training
    model.eval()
    try:
        return torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as err:  # export raises many error types; each means "cannot trace this model"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GraphSplitError(f"torch.export cannot trace {type(model).__name__}: {first_line[:300]}") from err
    finally:
        model.train(was_training)


class _Graph:
    """The exported graph with what splitting needs: free inputs, cut nodes, module stacks."""

    def __init__(self, model: nn.Module, program, hw: tuple[int, int]):
        self.model = model
        self.hw = hw
        self.graph = program.graph
        self.nodes = [n for n in self.graph.nodes]
        self.index = {n: i for i, n in enumerate(self.nodes)}
        signature = program.graph_signature
        if any(spec.kind.name not in ("USER_OUTPUT",) for spec in signature.output_specs):
            raise GraphSplitError(f"{type(model).__name__} changes its own buffers in eval mode; cannot cut it")
        user_outputs = [s for s in signature.output_specs if s.kind.name == "USER_OUTPUT"]
        if len(user_outputs) != 1:
            raise GraphSplitError(f"{type(model).__name__} returns {len(user_outputs)} outputs, not one logits tensor")
        params = dict(model.named_parameters(remove_duplicate=False))
        buffers = dict(model.named_buffers(remove_duplicate=False))
        # placeholder name -> (attribute name inside a part, tensor) for weights, buffers and lifted constants
        self.constants: dict[str, tuple[str, torch.Tensor]] = {}
        self.user_input = None
        for spec in signature.input_specs:
            kind = spec.kind.name
            if kind == "USER_INPUT":
                if self.user_input is not None:
                    raise GraphSplitError(f"{type(model).__name__} takes more than one input")
                self.user_input = spec.arg.name
            elif kind == "PARAMETER":
                self.constants[spec.arg.name] = (spec.target, params[spec.target])
            elif kind == "BUFFER":
                tensor = buffers[spec.target] if spec.target in buffers else program.constants[spec.target]
                self.constants[spec.arg.name] = (spec.target, tensor)
            elif kind == "CONSTANT_TENSOR":
                self.constants[spec.arg.name] = (f"_constants.{spec.target.replace('.', '_')}", program.constants[spec.target])
            else:
                raise GraphSplitError(f"{type(model).__name__} has a graph input of kind {kind}; cannot cut it")
        self.program_module = program.graph_module  # owns get_attr targets (regions such as autocast blocks)
        self.input_node = next(n for n in self.nodes if n.op == "placeholder" and n.name == self.user_input)
        self.batch = self.input_node.meta["val"].shape[0]
        self.free: set[fx.Node] = set()
        for node in self.nodes:  # in order, so a size's inputs are classified before it
            if self._is_free(node):
                self.free.add(node)
        self.cut_nodes = self._cut_nodes()
        self.uncut_blocks: list[str] = []  # blocks after which more than one tensor is needed (set by _boundaries)
        self.opened: set[str] = set()  # the groups opened, other than the model (set by _boundaries)
        self.last_index: dict[str, int] = {}  # module name -> index of the last node that runs inside it
        for node in self.nodes:
            for name in self.stack(node):
                self.last_index[name] = self.index[node]

    def _is_free(self, node: fx.Node) -> bool:
        """Readable or recomputable by every part: a weight, buffer, constant or graph attribute, the batch size,
        or anything computed from those alone, not from the image (sizes, position embeddings, rotary tables).
        Nodes that are written in place, or that write, are never free: a copy per part would lose the write."""
        if node.op == "placeholder":
            return node.name in self.constants
        if node.op == "get_attr":
            return True
        if node.op != "call_function" or _mutates(node) or any(_mutates(u) and u.args and u.args[0] is node
                                                                   for u in node.users):
            return False
        if self._is_batch_size(node):
            return True
        return all(a in self.free for a in node.all_input_nodes)

    def _is_batch_size(self, node: fx.Node) -> bool:
        value = node.meta.get("val")
        return (node.target is torch.ops.aten.sym_size.int and isinstance(value, torch.SymInt)
                and node.args[1] == 0 and str(value) == str(self.batch))

    def _cut_nodes(self) -> set[fx.Node]:
        """Nodes after which only the node's own tensor is still needed."""
        last_use = {}
        for node in self.nodes:
            if node in self.free or node.op == "output":
                continue
            users = [u for u in node.users if not (u in self.free)]
            last_use[node] = max((self.index[u] for u in users), default=self.index[node])
        cuts, reach = set(), -1
        for node in self.nodes:
            if node in self.free or node.op == "output":
                continue
            value = node.meta.get("val")
            if (reach <= self.index[node] and isinstance(value, torch.Tensor) and value.dim() >= 3
                    and str(value.shape[0]) == str(self.batch)):
                cuts.add(node)
            reach = max(reach, last_use[node])
        return cuts

    def stack(self, node: fx.Node) -> list[str]:
        entries = node.meta.get("nn_module_stack") or {}
        return [name for name, _ in entries.values() if name]

    # --- parts -------------------------------------------------------------------------------------------------

    def segment(self, start: fx.Node, end: fx.Node | None,
                lead_end: tuple[fx.Node, Format] | None = None) -> fx.GraphModule:
        """A module computing ``end`` (``None``: the graph's output) from ``start``'s tensor.

        With ``lead_end`` (a cut node between them and its layout: in the head, where the model's own
        ``forward_features`` ends, :func:`_features_end`) the module runs ``start -> lead_end`` and
        ``lead_end -> end`` as two segments joined by a :class:`FeaturesEnd` marker, which returns its input: the
        output is bit for bit the same, and the second segment reads nothing of the first but the marker's tensor
        and weights, so :func:`split_graph_head` takes them apart at the marker, also after pickling (which
        re-traces a graph module: its submodule calls stay, its node names do not). Where both segments would
        compute one thing from weights alone (each segment computes its own), the marker is left out: the head
        runs each operation once, as without it, and its MACs stay the same."""
        graph = fx.Graph()
        root: dict[str, torch.Tensor | nn.Module] = {}
        x = graph.placeholder("x")
        if lead_end is None:
            out = self._copy_range(graph, root, x, start, end)
        else:
            node, layout = lead_end
            name = "forward_features_end"
            while hasattr(self.model, name):  # a name of the model's own would clash with its weights' holders
                name += "_"
            root[name] = FeaturesEnd(layout)
            before, after = set(), set()
            marked = graph.call_module(name, (self._copy_range(graph, root, x, start, node, before),))
            out = self._copy_range(graph, root, marked, node, end, after)
            if before & after:
                return self.segment(start, end)
        graph.output(out)
        graph.lint()
        return fx.GraphModule(root, graph, class_name="GraphPart")

    def _copy_range(self, graph: fx.Graph, root: dict, x: fx.Node, start: fx.Node, end: fx.Node | None,
                    computed: set[fx.Node] | None = None) -> fx.Node:
        """Append to ``graph`` the nodes computing ``end`` (``None``: the graph's output) from ``x``, which stands
        for ``start``'s tensor; returns the node of the result. Weights, constants and the batch size are read
        (or recomputed) afresh: the nodes made here use no node of ``graph`` made before but ``x``. ``computed``
        collects the nodes computed from weights alone (other than the batch size) that this copies."""
        env: dict[fx.Node, fx.Node] = {start: x}

        def lookup(node: fx.Node) -> fx.Node:
            if node in env:
                return env[node]
            if node.op == "placeholder" and node.name in self.constants:
                target, tensor = self.constants[node.name]
                root[target] = tensor
                env[node] = graph.get_attr(target)
            elif node.op == "get_attr":
                root[node.target] = getattr(self.program_module, node.target)
                env[node] = graph.get_attr(node.target)
            elif self._is_batch_size(node):
                env[node] = graph.call_function(torch.ops.aten.sym_size.int, (x, 0))
            elif node in self.free:
                env[node] = copy(node)
                if computed is not None and node.op == "call_function":
                    computed.add(node)
            else:
                raise GraphSplitError(f"internal: {node.name} is needed across a cut")  # a bug in _cut_nodes
            return env[node]

        device_of_input = graph.call_function(getattr, (x, "device"))

        def copy(node: fx.Node) -> fx.Node:
            new = graph.node_copy(node, lookup)
            if isinstance(new.kwargs.get("device"), torch.device):
                # Made on the export's device: follow the input's device instead (a part moved to a GPU).
                new.kwargs = {**new.kwargs, "device": device_of_input}
            return new

        stop = self.index[end] if end is not None else len(self.nodes)
        out = None
        for node in self.nodes[self.index[start] + 1 : stop + 1]:
            if node in self.free or node.op == "placeholder":
                continue
            if node.op == "output":
                out = lookup(node.args[0][0])
                break
            env[node] = copy(node)
        else:
            out = env[end]
        if not device_of_input.users:
            graph.erase_node(device_of_input)
        return out


def _mutates(node: fx.Node) -> bool:
    """Whether a call writes into one of its arguments (an in-place op such as ``relu_`` or ``index_put_``)."""
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


# --- the anatomy ----------------------------------------------------------------------------------------------------


def _rule_boundaries(g: _Graph, prefix_hint: int | None, rule: _Rule = _RULES[0]) -> list[_Boundary]:
    """Block ends under one grouping rule, with the classes that are blocks in some of their modules closed.

    Blocks of one class are cut alike. A module of a class that holds a container (torchvision's InvertedResidual
    with its ``block`` Sequential, ConvNeXt's CNBlock) that the rule opens, but in which no module ends at a cut
    node before its own end does, is a block: a residual connection around its container (or branches side by side)
    keeps the block's input needed to its end (past the add, at most an activation follows). Then the class is a
    block in all its modules: where others of them can be cut inside (the same layers without the residual: a
    stage's first, strided block), those cuts are an accident of a missing skip connection, not block boundaries.
    timm's stages (``stages.N`` holding ``downsample`` and ``blocks``) can all be cut between their blocks, and stay
    groups; so do modules with cut nodes inside that are no boundaries (Nest's levels, whose blocks hand on a layout
    that is read as no image) and modules that cannot be cut at their end either (blocks that pass two tensors on)."""
    modules = dict(g.model.named_modules(remove_duplicate=False))
    cut_inside: set[str] = set()  # modules inside which a module ends at a cut node, before their own end
    for name, last in g.last_index.items():
        if g.nodes[last] in g.cut_nodes:
            parts = name.split(".")
            cut_inside.update(a for a in (".".join(parts[:i]) for i in range(1, len(parts)))
                              if last < g.last_index.get(a, -1))
    closed: set[str] = set()
    while True:
        found = _boundaries(g, prefix_hint, rule, frozenset(closed))
        opened = [n for n in g.opened if type(modules[n]) not in _PLAIN_CONTAINERS]
        blocks = {type(modules[n]) for n in opened
                  if n not in cut_inside and g.nodes[g.last_index[n]] in g.cut_nodes}
        more = {n for n in opened if type(modules[n]) in blocks}
        if more <= closed:
            return found
        closed |= more


def _boundaries(g: _Graph, prefix_hint: int | None, rule: _Rule = _RULES[0],
                closed: frozenset[str] = frozenset()) -> list[_Boundary]:
    """Block ends, in order, with their layouts (rule 2 of the module docstring), the modules in ``closed`` taken
    for blocks. Sets ``g.opened`` to the groups opened (other than the model) and ``g.uncut_blocks``."""
    g.uncut_blocks = []
    g.opened = set()
    modules = dict(g.model.named_modules(remove_duplicate=False))
    last_index = g.last_index
    found: list[_Boundary] = []
    current, pending, own_layout = None, None, None
    repeated = _repeated_children(g.model)
    heads = _heads(g)

    weighted_before = False  # whether a block with weights came before the current one

    def weighted(name: str) -> bool:
        return any(True for _ in modules[name].parameters())

    def flush():
        if pending is None:
            return
        if weighted(pending.block):
            found.append(pending)
        elif found:
            found[-1] = pending  # a block without weights (activation, pooling) joins the block before it
        elif weighted_before:
            found.append(pending)  # the blocks before it hand on more than one tensor: it ends them
        # else: no block before it (a dropout after the position embedding): it joins the stem

    def leave():
        nonlocal weighted_before
        flush()
        weighted_before = weighted_before or (current is not None and weighted(current))

    for node in g.nodes:
        if node in g.free or node.op in ("placeholder", "output"):
            continue
        stack = [name for name in g.stack(node) if name in modules]
        if any(_inside(name, heads) for name in stack):
            leave()
            current = pending = None  # the classifier head, whatever its members look like: never a block
            continue
        block = _block_of(stack, modules, rule, closed, g.opened) if stack else None
        if block is not None and _parent(block) == "" and block not in repeated and block not in closed:
            # A direct child of the model: stem or head, never a block. Unless it holds blocks of a class that is
            # a block (_rule_boundaries): Inception-ResNet's mixed_6a, a reduction block beside the model's stages
            leave()
            current = pending = None
            continue
        if block is not None and block != current:
            leave()
            current, pending, own_layout = block, None, None
        if current is None:
            continue
        ends_block = block is not None and last_index[block] == g.index[node]
        if not ends_block and not (block is None and node in g.cut_nodes):
            continue  # only a block's last node, or a cut in the group's own code, can end a block
        layout = _node_layout(node, g.hw, prefix_hint)
        if ends_block:
            own_layout = layout  # what the block itself hands on
            if node in g.cut_nodes and layout is not None:
                pending = _Boundary(node, current, *layout)
            elif node not in g.cut_nodes:
                g.uncut_blocks.append(current)
        elif layout is not None and layout == own_layout:
            # The group's own code right after the block, in the block's layout (a residual add written in the
            # stage's forward): the block ends there. Not a head's token pooling or reshaping, which changes it.
            pending = _Boundary(node, current, *layout)
    flush()
    # The trunk's own stem and head: members of a trunk wrapper before its first block or after its last one
    while found and _trunk_member(found[0].block, modules, rule, closed, before=True):
        found.pop(0)
    while found and _trunk_member(found[-1].block, modules, rule, closed, before=False):
        found.pop()
    return found


def _trunk_member(name: str, modules: dict[str, nn.Module], rule: _Rule, closed: frozenset[str],
                  before: bool) -> bool:
    """Whether block ``name`` is a member of the model's *trunk* that stands before (``before``) or after all of the
    trunk's containers of blocks: stem or head, not a block.

    The trunk is a direct child of the model that holds the model's blocks in a container, beside members of its
    own, and is the only module of its class (torchvision's ViT ``encoder``: ``dropout``, ``layers``, ``ln``; timm's
    Gemma-4 and DeepSeek ViT classifiers: ``encoder`` with ``patch_embed``, ``blocks``, ``norm`` or ``pooler``). Its
    own members are what hangs directly off the model in other models (a patch embedding, a final norm), so they are
    stem or head in the same way; a stage of which the model has several (timm's ``stages.N``) is no trunk: its
    ``downsample`` is its first block and a norm after its blocks its last, in every stage alike."""
    trunk = _parent(name)
    if not trunk or _parent(trunk) != "":
        return False
    holder = modules[trunk]
    if type(holder) in _PLAIN_CONTAINERS or sum(type(m) is type(holder) for m in modules.values()) != 1:
        return False
    children = list(holder.named_children())
    containers = [i for i, (child_name, child) in enumerate(children)
                  if _is_plain_group(child, rule) and f"{trunk}.{child_name}" not in closed]
    if not containers:
        return False
    at = next(i for i, (child_name, _) in enumerate(children) if f"{trunk}.{child_name}" == name)
    return at < containers[0] if before else at > containers[-1]


def _stages(found: list[_Boundary], name: str) -> list[list[_Boundary]]:
    """Rule 3: group block ends by reduction into four stages."""
    levels: list[list[_Boundary]] = []
    for b in found:
        if b.reduction < 4:
            continue
        if levels and b.reduction < levels[-1][-1].reduction:
            raise GraphSplitError(f"{name}'s resolution goes back up at {b.block}; only single-path pyramids can be "
                                  "cut into four stages")
        if levels and b.reduction == levels[-1][-1].reduction:
            levels[-1].append(b)
        else:
            levels.append([b])
    if not levels:
        raise GraphSplitError(f"{name} has no block boundary at a reduction of 4x or more; cannot find its stages")
    if len(levels) == 1:
        if len(levels[0]) < 4:
            n = len(levels[0])
            raise GraphSplitError(f"{name} has {n} cuttable block{'' if n == 1 else 's'}; four stages need at least four")
        return split_evenly(levels[0], 4)
    while len(levels) > 4:
        levels[-2:] = [levels[-2] + levels[-1]]
    while len(levels) < 4:
        longest = max(range(len(levels)), key=lambda i: len(levels[i]))
        if len(levels[longest]) < 2:
            raise GraphSplitError(f"{name} has {len(levels)} resolutions and too few blocks to make four stages")
        halves = split_evenly(levels[longest], 2)
        levels[longest : longest + 1] = halves
    return levels


# --- the head's lead: where the model's own forward_features ends -------------------------------------------------
#
# A hand-written family says in code what its model's forward_features runs after the last block (a Call's lead). The
# graph split has no such table: it asks the model. It runs the model's own ``forward_features`` and the exported
# graph on one image and looks, from the last block's output on, for the first node of the head whose tensor is the
# features exactly (shape and every value). The head is then cut into two segments there, joined by a FeaturesEnd
# marker (Graph.segment); split_graph_head takes them apart for forward_features and forward_head.
#
# Why these choices:
# * exact equality, not a tolerance: the graph runs the model's own operations, so the node where forward_features
#   ends carries the very same values; a near match would be a different tensor (a BatchNorm at its initial
#   statistics is almost, not exactly, the identity).
# * the first match, counting the last block's output: what follows the true end may repeat its values (a pooling of
#   a 1x1 map, a dropout, a contiguous), so a later match could put the pooling into forward_features. Ops after the
#   first match that keep its values are left to the head, which changes nothing they compute.
# * the first match must be a cut node (only its tensor is needed after it) with a layout the zoo reads; otherwise
#   no lead (forward_features then ends at the last block, as before): never a cut that needs two tensors.
# * the head stays one module with the same weights, names and operations: forward is bit for bit the same, the
#   state dict and MACs do not change (the marker has no weights and computes nothing; Graph.segment leaves it out
#   where it would make the head compute something twice), and the marker, a submodule call, survives pickling,
#   which re-traces a graph module and renames its nodes.
# * the search costs one forward_features and one run of the graph on one image, once per model and input size
#   (anatomies are cached), beside the export itself.


class FeaturesEnd(nn.Module):
    """In a head cut from a graph: marks where the model's own ``forward_features`` ends; returns its input.

    ``format`` is the layout of the features there (NCHW where timm's forward_features turns a channels-last map
    back, as TinyViT's does), which ``num_features`` reads its width from."""

    def __init__(self, format: Format):
        super().__init__()
        self.format = format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return str(self.format)


def _features_end(g: _Graph, start: fx.Node, prefix_hint: int | None) -> tuple[fx.Node, Format] | None:
    """The head's node, after ``start`` (the last block's output), where the model's own ``forward_features`` ends,
    and its layout; None where it ends at ``start``, or cannot be found safely (see the comment above)."""
    model = g.model
    forward_features = getattr(model, "forward_features", None)
    if not callable(forward_features):
        return None  # torchvision: no forward_features; the last block's output stands for it
    if model_device(model).type == "meta":
        # No values to compare (dry runs and searches price models there): the marker computes nothing and holds no
        # weights, so without it the model's parts, MACs and parameters are the same.
        return None
    # One image of a private generator: the caller's random numbers stay as they were
    x = torch.randn(1, input_channels(model), *g.hw, generator=torch.Generator().manual_seed(0))
    x = x.to(model_device(model))
    head = [n for n in g.nodes[g.index[start] :] if n is start or (n not in g.free and n.op == "call_function")]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            theirs = forward_features(x)
            if not isinstance(theirs, torch.Tensor):
                return None  # a list of maps (CoaT) or a tuple: no one tensor to end at
            values = _values(g, x, set(head))
    except Exception:  # the model's own forward_features, or the graph on real tensors, failed: no lead
        return None
    finally:
        model.train(was_training)
    for node in head:
        value = values.get(node)
        if (isinstance(value, torch.Tensor) and value.shape == theirs.shape and value.dtype == theirs.dtype
                and torch.equal(value, theirs)):
            if node is start or node not in g.cut_nodes:
                return None
            layout = _node_layout(node, g.hw, prefix_hint)
            return (node, layout[0]) if layout is not None else None
    return None


class _Recorder(fx.Interpreter):
    """Runs the exported graph, keeping a copy of the values of the nodes asked for as each is computed: a later
    in-place op (ResNetV2's ``ReLU(inplace=True)`` after its final BatchNorm) must not make the BatchNorm's node
    look as if it computed the activation's output."""

    def __init__(self, module: fx.GraphModule, keep: set[fx.Node]):
        super().__init__(module)
        self.keep, self.values = keep, {}

    def run_node(self, node: fx.Node):
        value = super().run_node(node)
        if node in self.keep and isinstance(value, torch.Tensor):
            self.values[node] = value.clone()
        return value


def _values(g: _Graph, x: torch.Tensor, keep: set[fx.Node]) -> dict[fx.Node, object]:
    """The values of the nodes in ``keep`` when the exported graph runs on ``x``, with the model's weights."""
    args = [g.constants[n.name][1] if n.name in g.constants else x for n in g.nodes if n.op == "placeholder"]
    recorder = _Recorder(g.program_module, keep)
    recorder.run(*args, enable_io_processing=False)
    return recorder.values


def split_graph_head(head: fx.GraphModule) -> tuple[fx.GraphModule, fx.GraphModule] | None:
    """``(lead, rest)`` of a head cut from a graph with a :class:`FeaturesEnd` marker (None without one): the
    nodes before the marker and those after it, as two graph modules that name the head's submodules, weights and
    buffers as the head does (they are the head's own: shared, never copied), so ``rest(lead(x)) == head(x)``."""
    nodes = list(head.graph.nodes)
    marks = [n for n in nodes if n.op == "call_module" and isinstance(head.get_submodule(n.target), FeaturesEnd)]
    if len(marks) != 1 or len(marks[0].args) != 1:
        return None
    mark = marks[0]
    at = nodes.index(mark)
    lead_graph, lead_env = fx.Graph(), {}
    for node in nodes[:at]:
        lead_env[node] = lead_graph.node_copy(node, lambda n: lead_env[n])
    lead_graph.output(lead_env[mark.args[0]])
    rest_graph = fx.Graph()
    rest_env = {mark: rest_graph.placeholder("x")}
    for node in nodes[at + 1 :]:
        for used in node.all_input_nodes:
            if used not in rest_env:
                if used.op != "get_attr":
                    # A second tensor across the cut (Graph.segment never makes one): no split. A weight may be
                    # read on both sides: a re-traced (unpickled) graph reads each parameter once, before the marker
                    return None
                rest_env[used] = rest_graph.node_copy(used)
        rest_env[node] = rest_graph.node_copy(node, rest_env.__getitem__)
    lead, rest = _graph_part(head, lead_graph), _graph_part(head, rest_graph)
    lead.features_format = head.get_submodule(mark.target).format
    return lead, rest


def _graph_part(head: fx.GraphModule, graph: fx.Graph) -> fx.GraphModule:
    graph.lint()
    part = fx.GraphModule(head, graph, class_name="GraphPart")
    # The head's own holders, by the head's names (the constructor makes new ones on the way to each weight):
    # rest.get_submodule(name) is the head's classifier, and functional_call takes the head's names.
    part._modules = {k: m for k, m in head._modules.items() if not isinstance(m, FeaturesEnd)}
    part._parameters = dict(head._parameters)
    part._buffers = dict(head._buffers)
    part._non_persistent_buffers_set = set(head._non_persistent_buffers_set)
    return part


_ANATOMIES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def graph_anatomy(model: nn.Module, input_size: tuple[int, int]) -> Anatomy:
    """The anatomy of ``model`` for images of ``input_size``, by splitting its exported graph (cached per size)."""
    hw = (int(input_size[0]), int(input_size[1]))
    cached = _ANATOMIES.setdefault(model, {})
    key = (hw, tuple(id(m) for m in model.modules()))
    if key not in cached:
        try:
            cached[key] = _build(model, hw)
        except GraphSplitError as err:
            raise GraphSplitError(
                f"stitchkit cannot cut {type(model).__name__} at {hw[0]}x{hw[1]}: {err}. docs/models.md lists the "
                "models that can be cut; register a Family (stitchkit.zoo.register_family) to cut this one by hand"
            ) from err
    return cached[key]


def _find_stages(g: _Graph, prefix_hint: int | None, name: str) -> list[list[_Boundary]]:
    """Rules 2 and 3 under each grouping rule (_RULES). The first rule whose four stages all hold more than one
    block wins; else the rule whose stages do most often (the earlier one of equals). A stage of one block has its
    first block for its end (a gap x:x removes nothing), and a coarser rule can hide the blocks a later one finds:
    torchvision's RegNet keeps them in AnyStage, a Sequential subclass that the first rule takes for one block. The
    error is the first rule's, saying why when most blocks hand on more than one tensor."""
    found = _rule_boundaries(g, prefix_hint)
    uncut = list(g.uncut_blocks)
    best, first_error = None, None
    for i, rule in enumerate(_RULES):
        try:
            stages = _stages(found if i == 0 else _rule_boundaries(g, prefix_hint, rule), name)
        except GraphSplitError as err:
            if i == 0:
                first_error = err
            continue
        score = sum(len(stage) > 1 for stage in stages)
        if best is None or score > best[0]:
            best = (score, stages)
        if score == len(stages):
            break
    if best is not None:
        return best[1]
    err = first_error
    if len(uncut) > len(found):
        raise GraphSplitError(
            f"{err}: after {len(uncut)} of its {len(uncut) + len(found)} blocks more than one tensor is still "
            f"needed (e.g. after {uncut[0]}: parallel branches, two streams, or an earlier output kept for "
            "later), and an adapter maps one tensor") from None
    raise err


def _build(model: nn.Module, hw: tuple[int, int]) -> Anatomy:
    name = type(model).__name__
    g = _Graph(model, _export(model, hw), hw)
    prefix_hint = getattr(model, "num_prefix_tokens", None)
    stages = _find_stages(g, prefix_hint if isinstance(prefix_hint, int) else None, name)
    formats = []
    for stage in stages:
        # One layout per stage: a boundary of another layout (or another number of prefix tokens) inside the stage
        # is dropped, so its block joins the next.
        end = stage[-1]
        stage[:] = [b for b in stage if b.format is end.format and b.prefix == end.prefix]
        formats.append(end.format)
    first = stages[0][0]
    # The stem ends at the last cut node before the first block starts (its first node comes after that cut).
    block_start = min(g.index[n] for n in g.nodes if first.block in g.stack(n))
    stem_end = max((c for c in g.cut_nodes if g.index[c] < block_start), key=g.index.get, default=None)
    boundaries = [b.node for stage in stages for b in stage]
    start = stem_end if stem_end is not None else g.input_node
    stem = g.segment(g.input_node, stem_end) if stem_end is not None else nn.Identity()
    parts, previous = [], start
    for node in boundaries:
        parts.append(g.segment(previous, node))
        previous = node
    # The head, with where the model's own forward_features ends marked in it (a lead), when that can be found
    head = g.segment(previous, None, _features_end(g, previous, prefix_hint if isinstance(prefix_hint, int) else None))
    it = iter(parts)
    stage_parts = [[next(it) for _ in stage] for stage in stages]
    prefixes = [s[-1].prefix for s in stages]
    # The parts carry shapes baked in for this size: refuse another one in one line, not deep inside a reshape.
    (stem if stem_end is not None else stage_parts[0][0]).register_forward_pre_hook(MadeFor(hw))
    anatomy = Anatomy(stem, stage_parts, head, formats, num_prefix_tokens=max(prefixes),
                      class_token=has_class_token(model), reductions=[s[-1].reduction for s in stages],
                      stage_prefix_tokens=prefixes)
    anatomy.block_names = [[b.block for b in stage] for stage in stages]
    anatomy.token_order = _unrolled_order(model, [b for stage in anatomy.block_names for b in stage])
    return anatomy


class MadeFor:
    """Forward pre-hook on the first part of a graph split: its images must have the size the graph was exported
    at. A named class, not a closure: stitched models pickle."""

    def __init__(self, hw: tuple[int, int]):
        self.hw = hw

    def __call__(self, module: nn.Module, args) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() == 4 and tuple(x.shape[-2:]) != self.hw:
            h, w = self.hw
            raise GraphSplitError(
                f"these parts were cut from the model's exported graph for {h}x{w} images and cannot take "
                f"{x.shape[-2]}x{x.shape[-1]}; cut them again for that size with input_size={x.shape[-1]} "
                "(split(..., input_size=), create_stitched(..., input_size=), data.input_size)")


def _unrolled_order(model: nn.Module, block_names: list[str]):
    """For a model that keeps its tokens unrolled into mask units between blocks (timm's Hiera: ``unroll`` before
    the blocks, ``reroll`` to read a block's output as an image), the row-major order after ``n`` blocks, taken
    from the model's own ``reroll``; None for every other model."""
    reroll = getattr(model, "reroll", None)
    if reroll is None or not hasattr(model, "unroll") or not hasattr(reroll, "schedule"):
        return None
    indices = []
    for name in block_names:  # the model's own block index that ends each of our blocks ("blocks.7" -> 7)
        tail = name.rsplit(".", 1)[-1]
        if not tail.isdigit():
            raise GraphSplitError(f"cannot tell which of its blocks {name} is, to put its tokens row by row")
        indices.append(int(tail))
    return _TokenOrders(reroll, indices)


class _TokenOrders:
    """``order(n)``: after ``n`` blocks, which unrolled token sits at each row-major position (None when the order
    is already row-major). A named class, not a closure: anatomies are cached and stitched models pickle."""

    def __init__(self, reroll: nn.Module, block_indices: list[int]):
        self.reroll, self.block_indices = reroll, block_indices

    @torch.no_grad()
    def __call__(self, n: int) -> torch.Tensor | None:
        if n == 0:
            return None  # cuts are after a stage's first block at the earliest
        _, size = self.reroll.schedule[self.block_indices[n - 1]]
        tokens = math.prod(size)
        positions = torch.arange(tokens, dtype=torch.float64).view(1, tokens, 1)
        order = self.reroll(positions, self.block_indices[n - 1]).reshape(-1).long()
        return None if torch.equal(order, torch.arange(tokens)) else order
