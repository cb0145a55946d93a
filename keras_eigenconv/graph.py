"""Model walking, cloning with weight copy, and every use of private Keras internals.

This is the only module of the package that reads Keras' private attributes
(``_inbound_nodes``, ``_outbound_nodes``, ``_keras_history``, ``_nodes_by_depth``,
``_flatten_layers``, ``_tracker``) or imports from ``keras.src``; a Keras upgrade that moves
them is fixed here. Everything else walks and copies models through these functions:

- ``is_graph_model``: a Functional or Sequential model (one that ``clone_model`` rebuilds);
- ``walk``: ``(path, layer)`` of every layer, nested graph models entered (``outer/inner``);
- ``flatten_layers``: every layer object reachable from a model, subclassed ones included;
- ``call_input_shapes`` / ``input_shape``: the input shape of each call of a layer;
- ``single_consumer_pairs``: producer -> consumer pairs where the consumer (e.g. a
  ``BatchNormalization``) alone reads the producer's only output;
- ``sole_consumer``: the one layer that reads a layer's only output (chains of layers);
  ``readers``: every layer that reads it (branches, e.g. squeeze-and-excitation);
- ``clone_model``: the one way to copy a model, optionally replacing layers; the copy owns
  fresh weight buffers (never the original's);
- ``replace_variable``: swap a layer's weight for a new one of another shape in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = [
    "attribute_layers",
    "call_input_shapes",
    "clone_model",
    "copy_subclassed",
    "copy_weights",
    "flatten_layers",
    "get_attribute_layer",
    "input_shape",
    "is_config_functional",
    "is_container",
    "is_graph_model",
    "is_subclassed",
    "layer_input_shapes",
    "model_input_shapes",
    "own_weights",
    "raw_kernels",
    "readers",
    "replace_variable",
    "set_attribute_layer",
    "single_consumer_pairs",
    "sole_consumer",
    "sublayers",
    "traced_input_shapes",
    "walk",
    "walk_all",
]


def eager_scope():
    """A context in which backend ops run eagerly, even inside a symbolic trace.

    Keras builds a subclassed model's layers by calling it symbolically (``build_from_config``
    when a copy is made, ``model.build(shape)``); on TensorFlow that trace is a
    ``FuncGraph``, and ``tf.init_scope()`` lifts out of it, as Keras' own variable
    initializers do; on JAX it is a trace, and ``jax.ensure_compile_time_eval()`` evaluates
    concrete values inside it. A layer whose initial weights are computed in NumPy (from a
    drawn kernel) draws them in this scope. On other backends: no change.

    Returns:
        A context manager.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    if keras.backend.backend() == "jax":
        import jax

        return jax.ensure_compile_time_eval()
    return contextlib.nullcontext()


def is_graph_model(model) -> bool:
    """Whether ``model`` is a Functional or Sequential ``keras.Model`` (a layer graph).

    Args:
        model: any object.

    Returns:
        ``True`` for a model that ``keras.models.clone_model`` rebuilds layer by layer.
    """
    from keras.src.models.functional import Functional

    return isinstance(model, (keras.Sequential, Functional))


def walk(model, prefix: str = "", include_models: bool = False) -> Iterator[tuple[str, Any]]:
    """Iterate over ``(path, layer)`` of every layer of a model, each layer once.

    Nested Functional/Sequential models are entered and their layers listed as
    ``outer/inner``; with ``include_models`` the nested model itself is yielded first.
    Shared layers (and shared nested models) appear once, at their first path. In a
    subclassed model (or a custom block inside one) the layers are those held in its
    attributes (``attribute_layers``: directly, in lists and in dicts), and nested
    subclassed models and custom blocks are entered too; in a graph model, custom blocks
    are leaves (``clone_model`` rebuilds them whole).

    Args:
        model: a built ``keras.Model``.
        prefix: prepended to every path.
        include_models: also yield the nested graph models.

    Returns:
        An iterator of ``(path, layer)`` pairs.
    """
    seen: set[int] = set()

    def rec(m, pre):
        graph = is_graph_model(m)
        children = m.layers if graph else [la for _, la in attribute_layers(m)]
        for layer in children:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            path = pre + layer.name
            if is_graph_model(layer) or (not graph and is_container(layer)):
                if include_models:
                    yield path, layer
                yield from rec(layer, path + "/")
            else:
                yield path, layer

    yield from rec(model, prefix)


def graph_models(model) -> Iterator[Any]:
    """Iterate over ``model`` and every graph model nested in it (each once).

    Args:
        model: a Functional or Sequential ``keras.Model``.

    Returns:
        An iterator of models, ``model`` first.
    """
    yield model
    for _, layer in walk(model, include_models=True):
        if isinstance(layer, keras.Model):
            yield layer


def flatten_layers(model) -> list:
    """Every layer reachable from ``model``, each once.

    Attributes of subclassed models are included; ``model`` itself is excluded.

    Args:
        model: a ``keras.Model`` (any kind) or a layer.

    Returns:
        A list of layers, in Keras' traversal order.
    """
    out, seen = [], set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def call_input_shapes(layer) -> list[tuple]:
    """The input shape of each recorded call of ``layer``, in order.

    Args:
        layer: a Keras layer that is part of a built graph model.

    Returns:
        A list of shape tuples (batch axis included), one per call of the layer (the first
        input tensor of each call); empty if the layer was never called symbolically.
    """
    shapes = []
    for node in getattr(layer, "_inbound_nodes", []):
        tensors = node.input_tensors
        if tensors:
            shapes.append(tuple(tensors[0].shape))
    return shapes


def input_shape(layer) -> tuple | None:
    """The input shape of the first recorded call of ``layer``.

    Args:
        layer: a Keras layer.

    Returns:
        The shape tuple (batch axis included), or ``None`` if the layer was never called.
    """
    shapes = call_input_shapes(layer)
    return shapes[0] if shapes else None


# ---- the shapes each layer sees in the model being converted ---------------------------


def model_input_shapes(model) -> list[tuple] | None:
    """The input shapes of ``model``, batch axis included.

    Graph models: the shapes of their ``Input`` tensors. Subclassed models: the shapes
    their first call built them with (``get_build_config``).

    Args:
        model: a built ``keras.Model``.

    Returns:
        A list of shape tuples, one per input; ``None`` when unknown (an unbuilt model, or a
        subclassed model built with keyword inputs).
    """
    if is_graph_model(model):
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            return None
        return [tuple(x.shape) for x in inputs] if inputs else None
    config = model.get_build_config()
    if not config or "input_shape" not in config:
        return None
    shape = config["input_shape"]
    if shape and isinstance(shape[0], (list, tuple)):
        return [tuple(s) for s in shape]
    return [tuple(shape)]


def _first_tensor_shape(args) -> tuple | None:
    for t in keras.tree.flatten(args):
        if isinstance(t, keras.KerasTensor) or ops.is_tensor(t):
            dims = tuple(t.shape)
            if dims:
                return (None, *(None if d is None else int(d) for d in dims[1:]))
    return None


def traced_input_shapes(model, input_shapes: list[tuple] | None = None) -> dict | None:
    """The input shape of every call of every layer of ``model``, traced from its inputs.

    ``model`` is run symbolically (``compute_output_spec``: shapes only, no data, no new
    nodes) on inputs of ``input_shapes`` (default ``model_input_shapes(model)``), with each
    reachable layer's ``call`` wrapped for the trace to record its first input's shape; the
    wrappers are removed afterwards. So a nested model built with ``(None, None, C)``
    inside a fixed-size model, a layer reused in a new graph, and the layers of a
    subclassed model (attributes, lists, dicts, nested blocks) all get the shapes they
    actually see in ``model``, once per call.

    Args:
        model: a built ``keras.Model`` (any kind).
        input_shapes: the input shapes (batch axis included); ``None``: the model's own.

    Returns:
        ``{id(layer): [shape, ...]}`` (batch axis ``None``), or ``None`` when the input
        shapes (spatial axes included) are unknown or the symbolic run fails.
    """
    from keras.src import backend as keras_backend

    shapes = input_shapes or model_input_shapes(model)
    if not shapes or any(d is None for s in shapes for d in tuple(s)[1:]):
        return None
    if is_graph_model(model):
        graph_model = model._functional if isinstance(model, keras.Sequential) else model
        if graph_model is None:
            return None
        dtypes = [x.dtype for x in graph_model.inputs]
        specs = [
            keras.KerasTensor((1, *s[1:]) if s[0] is None else tuple(s), dtype=dt)
            for s, dt in zip(shapes, dtypes)
        ]
        args = (keras.tree.pack_sequence_as(graph_model._inputs_struct, specs),)
    else:
        dtype = keras.backend.floatx()
        specs = [
            keras.KerasTensor((1, *s[1:]) if s[0] is None else tuple(s), dtype=dtype)
            for s in shapes
        ]
        args = (specs[0] if len(specs) == 1 else specs,)

    records: dict[int, list[tuple]] = {}
    patched = []

    def recording(layer, original):
        def call(*a, **kw):
            shape = _first_tensor_shape((a, kw))
            if shape is not None:
                records.setdefault(id(layer), []).append(shape)
            return original(*a, **kw)

        return call

    try:
        for layer in flatten_layers(model):
            if "call" in vars(layer):  # already wrapped (a layer listed twice)
                continue
            object.__setattr__(layer, "call", recording(layer, layer.call))
            patched.append(layer)
        keras_backend.compute_output_spec(lambda *a: model(*a), *args)
    except Exception:  # noqa: BLE001 - any failure of a user's call: fall back to the nodes
        return None
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
    return records


def layer_input_shapes(model) -> dict[int, list[tuple]]:
    """The input shapes of each call of each layer of ``model`` (nested layers included).

    ``traced_input_shapes`` when the model's input size is known; otherwise the shapes
    recorded in the layers' own call history (``call_input_shapes``), restricted to this
    model's graph where the layer was called elsewhere too.

    Args:
        model: a built ``keras.Model``.

    Returns:
        ``{id(layer): [shape, ...]}``; a layer absent from it was not called.
    """
    if is_graph_model(model):
        known = _known_node_shapes(model)
        if known is not None:  # every call already recorded at a known size: no trace
            return known
    traced = traced_input_shapes(model)
    if traced is not None:
        return traced
    out: dict[int, list[tuple]] = {}
    for m in graph_models(model) if is_graph_model(model) else [model]:
        nodes = _model_nodes(m._functional if isinstance(m, keras.Sequential) else m)
        for layer in m.layers:
            own = [n for n in getattr(layer, "_inbound_nodes", []) if n in nodes]
            calls = [tuple(n.input_tensors[0].shape) for n in own if n.input_tensors]
            out.setdefault(id(layer), []).extend(calls or call_input_shapes(layer))
    return out


def _known_node_shapes(model) -> dict | None:
    """The shapes of each layer's calls in the graphs of ``model`` when all are known and
    each nested model runs once (so its layers' own nodes are its calls); else ``None``."""
    out: dict[int, list[tuple]] = {}
    for m in graph_models(model):
        g = m._functional if isinstance(m, keras.Sequential) else m
        if g is None:
            return None
        nodes = _model_nodes(g)
        for layer in m.layers:
            calls = [
                tuple(n.input_tensors[0].shape)
                for n in getattr(layer, "_inbound_nodes", [])
                if n in nodes and n.input_tensors
            ]
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if is_graph_model(layer):
                if len(calls) > 1:
                    return None
            elif is_container(layer) or is_subclassed(layer):
                return None  # layers inside run without nodes: trace them
            if any(d is None for shape in calls for d in shape[1:]):
                return None
            out.setdefault(id(layer), []).extend(calls)
    return out


def sublayers(layer) -> list:
    """The layers directly inside ``layer`` (attributes, lists, dicts; a model's layers).

    Args:
        layer: a Keras layer or model.

    Returns:
        A list of layers, each once.
    """
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return list(layer._flatten_layers(include_self=False, recursive=False))


def is_container(layer) -> bool:
    """Whether ``layer`` is entered by ``walk_all``: a model, or a layer of a user's class
    (not one of Keras' own, nor a class with ``graph_leaf = True`` such as this package's
    layers) that holds other layers.

    Args:
        layer: a Keras layer.

    Returns:
        ``True`` for a model or a custom block with sublayers.
    """
    if isinstance(layer, keras.Model):
        return True
    if type(layer).__module__.split(".")[0] == "keras" or getattr(type(layer), "graph_leaf", False):
        return False
    return bool(sublayers(layer))


def own_weights(layer) -> list:
    """The weights of ``layer`` that none of its sublayers holds (a raw ``add_weight``).

    Args:
        layer: a Keras layer.

    Returns:
        A list of variables.
    """
    inner = {id(w) for sub in sublayers(layer) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


def raw_kernels(model) -> list[tuple[str, Any, list]]:
    """Layers whose ``call`` must use a conv kernel directly: no layer to replace.

    Lists ``model`` and every layer of ``walk`` (nested blocks included) that is not one of
    Keras' own layers nor a ``graph_leaf`` layer and holds 4-D weights of its own (outside
    any sublayer), such as a kernel from ``add_weight`` run through ``ops.conv`` in
    ``call``: ``convert`` reports these instead of skipping them silently.

    Args:
        model: a built ``keras.Model``.

    Returns:
        A list of ``(path, layer, weights)`` (the model's own path is ``""``).
    """
    out = []
    for path, layer in [("", model), *walk(model, include_models=True)]:
        if type(layer).__module__.split(".")[0] == "keras" or getattr(
            type(layer), "graph_leaf", False
        ):
            continue
        kernels = [w for w in own_weights(layer) if len(w.shape) == 4]
        if kernels:
            out.append((path, layer, kernels))
    return out


def walk_all(
    model, prefix: str = "", leaf: Callable[[Any], bool] | None = None
) -> Iterator[tuple[str, Any]]:
    """``(path, layer)`` of every layer reachable from ``model``, each once, containers too.

    Graph models, subclassed models and custom blocks holding layers (``is_container``)
    are yielded and then entered (their layers listed as ``outer/inner``), unless
    ``leaf(layer)`` says to stop there (e.g. a compressed layer that holds a BatchNorm).

    Args:
        model: a ``keras.Model`` (any kind) or a layer.
        prefix: prepended to every path.
        leaf: ``fn(layer) -> bool``, layers not to enter.

    Returns:
        An iterator of ``(path, layer)`` pairs, a container before its layers.
    """
    seen: set[int] = set()

    def rec(m, pre):
        for layer in sublayers(m):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            path = pre + layer.name
            yield path, layer
            if is_container(layer) and not (leaf is not None and leaf(layer)):
                yield from rec(layer, path + "/")

    yield from rec(model, prefix)


def _model_nodes(model) -> set:
    nodes = set()
    for depth_nodes in getattr(model, "_nodes_by_depth", {}).values():
        nodes.update(depth_nodes)
    return nodes


def single_consumer_pairs(model, consumer_type: type) -> dict[int, Any]:
    """Producer -> consumer pairs where the consumer alone reads the producer's output.

    Lists each ``consumer_type`` layer of ``model`` (one level, not nested models) that is
    called once, on one tensor, produced by a layer that is called once and read by nothing
    else, and that is not a model output. In a ``Sequential`` model this is every
    ``consumer_type`` layer and the layer before it.

    Args:
        model: a Functional or Sequential ``keras.Model``.
        consumer_type: the consumer's layer class (e.g. ``keras.layers.BatchNormalization``).

    Returns:
        A dict ``{id(producer): consumer}``.
    """
    pairs: dict[int, Any] = {}
    if isinstance(model, keras.Sequential):
        layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
        for prev, layer in zip(layers[:-1], layers[1:]):
            if isinstance(layer, consumer_type):
                pairs[id(prev)] = layer
        return pairs
    nodes_in_model = _model_nodes(model)
    for layer in model.layers:
        if not isinstance(layer, consumer_type):
            continue
        nodes = [n for n in layer._inbound_nodes if n in nodes_in_model]
        if len(nodes) != 1 or len(layer._inbound_nodes) != 1 or len(nodes[0].input_tensors) != 1:
            continue
        tensor = nodes[0].input_tensors[0]
        prod = tensor._keras_history.operation
        if len(prod._inbound_nodes) != 1 or len(prod._outbound_nodes) != 1:
            continue
        if prod._outbound_nodes[0].operation is not layer:
            continue
        if any(t is tensor for t in model.outputs):
            continue
        pairs[id(prod)] = layer
    return pairs


def readers(model, layer) -> list[tuple[Any, int]] | None:
    """The layers that read ``layer``'s only output in the graph of ``model``.

    Args:
        model: a Functional or Sequential ``keras.Model`` (one level, as ``sole_consumer``).
        layer: a layer of ``model``.

    Returns:
        One ``(reader, n)`` per call that reads the output, ``n`` the number of input
        tensors of that call (2 for a ``Multiply`` of the output with another tensor); or
        ``None`` when ``layer`` is not called exactly once (in ``model`` and anywhere else),
        has more than one output, its output is an output of ``model``, or a reader is not
        a layer called once, in ``model``.
    """
    g = model._functional if isinstance(model, keras.Sequential) else model
    if g is None:
        return None
    nodes = _model_nodes(g)
    inbound = getattr(layer, "_inbound_nodes", [])
    if len(inbound) != 1 or inbound[0] not in nodes or len(inbound[0].outputs) != 1:
        return None
    tensor = inbound[0].outputs[0]
    if any(t is tensor for t in g.outputs):
        return None
    out = []
    for node in getattr(layer, "_outbound_nodes", []):
        reader = node.operation
        if (
            node not in nodes
            or not isinstance(reader, keras.layers.Layer)
            or len(reader._inbound_nodes) != 1
            or sum(t is tensor for t in node.input_tensors) != 1
        ):
            return None
        out.append((reader, len(node.input_tensors)))
    return out


def sole_consumer(model, layer) -> Any | None:
    """The one layer that reads ``layer``'s output in the graph of ``model``, if exactly one.

    ``layer`` must be called once (in ``model`` and anywhere else), with one output tensor
    that is not an output of ``model`` and that exactly one call reads: a call of a layer
    (not a ``keras.ops`` operation) that is called once, on that tensor alone. Following
    ``sole_consumer`` from a layer walks a chain in which every intermediate tensor has
    one reader, so the chain's layers can be rebuilt together (e.g. narrower).

    Args:
        model: a Functional or Sequential ``keras.Model`` (one level: ``layer`` is one of
            ``model.layers``; nested models are searched through their own graphs).
        layer: a layer of ``model``.

    Returns:
        The consuming layer, or ``None`` when there is not exactly one such reader.
    """
    g = model._functional if isinstance(model, keras.Sequential) else model
    if g is None:
        return None
    nodes = _model_nodes(g)
    inbound = getattr(layer, "_inbound_nodes", [])
    if len(inbound) != 1 or inbound[0] not in nodes or len(inbound[0].outputs) != 1:
        return None
    tensor = inbound[0].outputs[0]
    if any(t is tensor for t in g.outputs):
        return None
    outbound = getattr(layer, "_outbound_nodes", [])
    if len(outbound) != 1 or outbound[0] not in nodes:
        return None
    node = outbound[0]
    consumer = node.operation
    if not isinstance(consumer, keras.layers.Layer) or len(consumer._inbound_nodes) != 1:
        return None
    if len(node.input_tensors) != 1 or node.input_tensors[0] is not tensor:
        return None
    return consumer


def copy_weights(source, target) -> None:
    """Copy every weight of ``source`` into ``target`` as fresh values.

    The target never shares a buffer with the source (JAX donates buffers in ``fit``).

    Args:
        source: a built layer.
        target: a built layer of the same structure (same weights, in the same order).

    Raises:
        ValueError: when the two layers have different numbers of weights.
    """
    if len(source.weights) != len(target.weights):
        raise ValueError(
            f"The copy of layer '{source.name}' has {len(target.weights)} weights, the original "
            f"{len(source.weights)}; its get_config does not rebuild it."
        )
    for w_new, w_old in zip(target.weights, source.weights):
        w_new.assign(_fresh_copy(w_old))


def _fresh_copy(variable):
    """A new tensor holding ``variable``'s value, on the backend's device.

    ``ops.copy`` gives a buffer of its own on every backend (``jnp.copy``, ``tf.identity``
    followed by the variable's own copy on assign, ``torch.clone``), so the target shares
    nothing with the source; it is several times faster than a NumPy round trip (two host
    copies per weight).
    """
    return ops.copy(variable.value)


# ---- subclassed models: layers held in attributes, copied and replaced in place ---------

# Keras' own bookkeeping attributes that hold layers (not the user's structure).
_INTERNAL_ATTRS = frozenset({"_layers", "_functional", "_operations", "_tracker"})
_MAX_NESTING = 4  # lists/dicts inside lists/dicts followed this deep


def _held(value, path: tuple, depth: int = 0) -> Iterator[tuple[tuple, Any]]:
    if isinstance(value, keras.layers.Layer):
        yield path, value
    elif depth < _MAX_NESTING and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _held(item, (*path, i), depth + 1)
    elif depth < _MAX_NESTING and isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield from _held(item, (*path, key), depth + 1)


def attribute_layers(layer) -> list[tuple[tuple, Any]]:
    """The layers held in ``layer``'s attributes: directly, in lists and in dicts.

    Args:
        layer: a layer or a subclassed model.

    Returns:
        A list of ``(key path, sublayer)``: the path is the attribute name followed by list
        indices and dict keys (``("blocks", 0, "conv")``), what ``set_attribute_layer``
        takes. Layers held only in tuples or other containers are not listed.
    """
    out = []
    for name, value in vars(layer).items():
        if name in _INTERNAL_ATTRS or name.startswith("_self_"):
            continue
        out.extend(_held(value, (name,)))
    return out


def _holder(root, path: tuple):
    """``(owner layer, container, key)`` of the value at ``path`` under ``root``."""
    owner, holder = root, root
    for key in path[:-1]:
        if isinstance(holder, (list, dict)):
            holder = holder[key]
        else:
            holder = getattr(holder, key)
        if isinstance(holder, keras.layers.Layer):
            owner = holder
    return owner, holder, path[-1]


def get_attribute_layer(root, path) -> Any:
    """The layer at ``path`` (as ``attribute_layers`` gives it) under ``root``.

    Args:
        root: a layer or a subclassed model.
        path: a sequence of attribute names, list indices and dict keys.

    Returns:
        The layer.
    """
    path = tuple(path)
    _, holder, key = _holder(root, path)
    return holder[key] if isinstance(holder, (list, dict)) else getattr(holder, key)


def set_attribute_layer(root, path, new) -> None:
    """Put the layer ``new`` at ``path`` under ``root``, in place of the layer there.

    The old layer is untracked by the layer that holds it (its weights leave the model's
    weights) and ``new`` is tracked in its place, even in a built layer.

    Args:
        root: a layer or a subclassed model.
        path: a sequence of attribute names, list indices and dict keys.
        new: the new layer.
    """
    path = tuple(path)
    owner, holder, key = _holder(root, path)
    old = holder[key] if isinstance(holder, (list, dict)) else getattr(holder, key)
    tracker = owner._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        tracker.untrack(old)
        if isinstance(holder, (list, dict)):
            holder[key] = new
            tracker.track(new)
        else:
            setattr(holder, key, new)
    finally:
        if locked:
            tracker.lock()


_NODE = "__node__"  # a replaced-layer path that names a node of a Functional's graph


def _replaced_layer(model, path):
    if path[0] == _NODE:
        return model.get_layer(path[1])
    return get_attribute_layer(model, path)


def _replaced_configs(model) -> list:
    return [
        [list(path), keras.saving.serialize_keras_object(_replaced_layer(model, path))]
        for path in getattr(model, "_keras_eigenconv_replaced", [])
    ]


def _substitute(model, old, new) -> None:
    """Run ``new`` in place of the layer ``old`` in the graph of the Functional ``model``
    (every node of ``old`` there, the model's layer lists and attributes)."""
    nodes = _model_nodes(model)
    for node in list(old._inbound_nodes):
        if node not in nodes:
            continue
        node.operation = new
        new._inbound_nodes.append(node)
        index = len(new._inbound_nodes) - 1
        for t in node.outputs:
            t._keras_history = t._keras_history._replace(operation=new, node_index=index)
    for seq in [model._operations, model._layers, *model._operations_by_depth.values()]:
        for i, item in enumerate(seq):
            if item is old:
                seq[i] = new
    ids = model._tracker.stored_ids["layers"]
    ids.discard(id(old))
    ids.add(id(new))
    for path, layer in attribute_layers(model):
        if layer is old:
            set_attribute_layer(model, path, new)


def is_config_functional(model) -> bool:
    """Whether ``model`` is a Functional subclass whose class builds its graph from its own
    constructor arguments (``get_config`` overridden): KerasHub backbones and task models.

    Args:
        model: any object.

    Returns:
        ``True`` for such a model; ``clone_model`` copies it from its config and replaces
        layers in the copy's graph, keeping its class.
    """
    from keras.src.models.functional import Functional

    return (
        isinstance(model, Functional)
        and type(model) is not Functional
        and getattr(type(model), "_keras_eigenconv_base", type(model)).get_config
        is not Functional.get_config
    )


class _ConvertedModel:
    """Methods of a converted subclassed model's class (a subclass of the user's class
    that only adds the replaced layers to its config, so ``.keras`` files load)."""

    def get_config(self):
        base = type(self)._keras_eigenconv_base
        return {
            "base": keras.saving.get_registered_name(base),
            "base_config": base.get_config(self),
            "replaced": _replaced_configs(self),
        }

    @classmethod
    def from_config(cls, config):
        base = keras.saving.get_registered_object(config["base"])
        if base is None:
            raise ValueError(
                f"Cannot load a converted '{config['base']}' model: its class is not known. "
                "Register it with @keras.saving.register_keras_serializable() (or pass "
                "custom_objects) as for the original model."
            )
        return _rebuild(base, config["base_config"], config["replaced"])


# The name every converted subclassed model is saved under; this stand-in (registered at
# import) loads them in a fresh process, whatever the user's class.
keras.saving.register_keras_serializable(package="keras_eigenconv", name="ConvertedModel")(
    _ConvertedModel
)
_CONVERTED_CLASSES: dict[type, type] = {}


def _converted_class(base: type) -> type:
    """The subclass of ``base`` that converted models of class ``base`` get (cached)."""
    if base not in _CONVERTED_CLASSES:
        cls = type(
            base.__name__,
            (base,),
            {
                "get_config": _ConvertedModel.get_config,
                "from_config": classmethod(_ConvertedModel.from_config.__func__),
                "_keras_eigenconv_base": base,
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "__doc__": base.__doc__,
            },
        )
        register = keras.saving.register_keras_serializable(
            package="keras_eigenconv", name="ConvertedModel"
        )
        register(cls)  # the class saves under the shared name ...
        register(_ConvertedModel)  # ... which keeps loading through the stand-in
        _CONVERTED_CLASSES[base] = cls
    return _CONVERTED_CLASSES[base]


def _rebuild(base: type, base_config: dict, replaced: list) -> Any:
    """A new (unbuilt) model of class ``base`` from its config, with the recorded layer
    replacements applied; its class becomes ``_converted_class(base)`` if any."""
    model = base.from_config(base_config)
    paths = []
    for path, layer_config in replaced:
        layer = keras.saving.deserialize_keras_object(layer_config)
        if path[0] == _NODE:
            _substitute(model, model.get_layer(path[1]), layer)
        else:
            set_attribute_layer(model, path, layer)
        paths.append(tuple(path))
    if paths:
        model.__class__ = _converted_class(base)
        object.__setattr__(model, "_keras_eigenconv_replaced", paths)
    return model


def is_subclassed(model) -> bool:
    """Whether ``model`` is a subclassed ``keras.Model`` (not a graph model).

    Args:
        model: any object.

    Returns:
        ``True`` for a ``keras.Model`` that is neither Functional nor Sequential.
    """
    return isinstance(model, keras.Model) and not is_graph_model(model)


def copy_subclassed(model) -> Any:
    """A copy of a built subclassed (or ``is_config_functional``) ``model`` that owns its
    weights.

    As Keras copies a subclassed model (``keras.models.clone_model``, pickling): a new
    instance from ``get_config`` (the user's class; for a model converted before, its
    replaced layers too), built with the original's build config, then every variable
    copied (fresh buffers). The user's model is not modified.

    Args:
        model: a built subclassed ``keras.Model``, or a Functional subclass built from its
            config.

    Returns:
        The copy, of the same class.

    Raises:
        ValueError: when the model cannot be rebuilt from its config, or the copy's
            variables do not match the original's.
    """
    cls = type(model)
    base = getattr(cls, "_keras_eigenconv_base", cls)
    build_config = model.get_build_config()
    try:
        new = _rebuild(base, base.get_config(model), _replaced_configs(model))
        if build_config and not new.built:
            skipped = _skip_initializers(new)  # every variable is copied below
            try:
                new.build_from_config(build_config)  # runs call symbolically: builds all
            finally:
                for layer, attr, initializer in skipped:
                    object.__setattr__(layer, attr, initializer)
            new.built = True
    except (NotImplementedError, TypeError, ValueError) as err:
        raise ValueError(
            f"The subclassed model '{model.name}' ({base.__name__}) cannot be copied from its "
            f"config ({type(err).__name__}: {err}). Give the class a get_config() that "
            "returns its constructor arguments (as .keras saving needs), and build the model "
            "by calling it once."
        ) from err
    old_vars, new_vars = model.variables, new.variables
    if len(old_vars) != len(new_vars) or any(
        tuple(a.shape) != tuple(b.shape) for a, b in zip(old_vars, new_vars)
    ):
        raise ValueError(
            f"The copy of the subclassed model '{model.name}' built from its config has "
            f"{len(new_vars)} variables, the original {len(old_vars)} (or their shapes "
            "differ): its get_config()/build do not recreate the same layers."
        )
    for a, b in zip(old_vars, new_vars):
        b.assign(_fresh_copy(a))
    return new


def _replacement_in_copy(model, new, replace: Callable[[Any], Any]) -> Callable:
    """``fn(layer of new) -> replace(the matching layer of model)``: the same walk over the
    original and its copy pairs each layer with its copy."""
    old_walk = list(walk(model, include_models=True))
    new_walk = list(walk(new, include_models=True))
    if [type(la) for _, la in old_walk] != [type(la) for _, la in new_walk]:
        raise ValueError(f"The copy of '{model.name}' does not have the original's layers.")
    original_of = {id(n): o for (_, o), (_, n) in zip(old_walk, new_walk)}

    def replacement(copy_layer):
        old = original_of.get(id(copy_layer))
        return None if old is None else replace(old)

    return replacement


def _clone_subclassed(model, replace: Callable[[Any], Any] | None) -> Any:
    new = copy_subclassed(model)
    if replace is None:
        return new
    replacement = _replacement_in_copy(model, new, replace)

    def rec(container, root_path: tuple):
        for path, layer in attribute_layers(container):
            full = (*root_path, *path)
            new_layer = replacement(layer)
            if new_layer is not None:
                set_attribute_layer(new, full, new_layer)
                new._keras_eigenconv_replaced.append(full)
            elif is_graph_model(layer):
                if any(replacement(la) is not None for _, la in walk(layer)):
                    cloned = clone_model(layer, replace=replacement)
                    set_attribute_layer(new, full, cloned)
                    new._keras_eigenconv_replaced.append(full)
            elif is_container(layer):
                rec(layer, full)

    if "_keras_eigenconv_replaced" not in vars(new):
        object.__setattr__(new, "_keras_eigenconv_replaced", [])
    rec(new, ())
    if new._keras_eigenconv_replaced and not hasattr(type(new), "_keras_eigenconv_base"):
        new.__class__ = _converted_class(type(new))
    return new


def _clone_config_functional(model, replace: Callable[[Any], Any] | None) -> Any:
    new = copy_subclassed(model)
    if replace is None:
        return new
    replacement = _replacement_in_copy(model, new, replace)

    if "_keras_eigenconv_replaced" not in vars(new):
        object.__setattr__(new, "_keras_eigenconv_replaced", [])
    config_keys = set(getattr(type(new), "_keras_eigenconv_base", type(new)).get_config(new))
    carried = {  # layers the model's own config serializes (e.g. a task's backbone)
        id(layer)
        for path, layer in attribute_layers(new)
        if len(path) == 1 and str(path[0]).lstrip("_") in config_keys
    }
    for layer in list(new.layers):
        new_layer = replacement(layer)
        if new_layer is None and is_graph_model(layer):
            if any(replacement(la) is not None for _, la in walk(layer)):
                new_layer = clone_model(layer, replace=replacement)
        if new_layer is None:
            continue
        record = id(layer) not in carried
        _substitute(new, layer, new_layer)
        if record:
            new._keras_eigenconv_replaced.append((_NODE, new_layer.name))
    if new._keras_eigenconv_replaced and not hasattr(type(new), "_keras_eigenconv_base"):
        new.__class__ = _converted_class(type(new))
    return new


def clone_model(
    model,
    replace: Callable[[Any], Any] | None = None,
    call_function: Callable | None = None,
    copy_weights_: bool = True,
):
    """A copy of a graph ``model`` (nested graph models included, shared layers kept shared).

    Each layer is either replaced (``replace(layer)`` returns a new layer, which brings its
    own weights) or rebuilt from its config; rebuilt layers get a copy of the original's
    weights when ``copy_weights_`` (fresh buffers: the copy owns its weights). The user's
    model is not modified.

    Args:
        model: a Functional or Sequential ``keras.Model``.
        replace: ``fn(layer) -> layer or None``; ``None`` rebuilds the layer from its config.
        call_function: passed to ``keras.models.clone_model`` (how each new layer is called).
        copy_weights_: copy the weights of rebuilt layers (``False``: fresh initialization).

    Returns:
        The new model.

    Raises:
        ValueError: when ``model`` is not a graph model, or a layer's config does not
            rebuild it.
    """
    if is_subclassed(model) or is_config_functional(model):
        if call_function is not None or not copy_weights_:
            raise ValueError(
                f"Model '{model.name}' ({type(model).__name__}) is a subclassed keras.Model: "
                "it is copied whole (call_function and copy_weights_=False need a graph model)."
            )
        if is_config_functional(model):
            return _clone_config_functional(model, replace)
        return _clone_subclassed(model, replace)
    if not is_graph_model(model):
        raise ValueError(f"clone_model needs a keras.Model, got {type(model).__name__}.")
    pairs = []
    skipped: list[tuple[Any, str, Any]] = []  # initializers set aside while cloning

    def clone_fn(op):
        if not isinstance(op, keras.layers.Layer):
            return op  # keras.ops operations of a functional graph
        new = replace(op) if replace is not None else None
        if new is not None:
            return new
        new = op.__class__.from_config(op.get_config())
        if copy_weights_ and op.weights:
            skipped.extend(_skip_initializers(new))
        pairs.append((op, new))
        return new

    kwargs: dict[str, Any] = {"clone_function": clone_fn, "recursive": True}
    if call_function is not None:
        kwargs["call_function"] = call_function
    try:
        new_model = keras.models.clone_model(model, **kwargs)
    except ValueError as err:
        raise ValueError(f"keras.models.clone_model failed on '{model.name}': {err}") from err
    finally:
        for layer, attr, initializer in skipped:
            object.__setattr__(layer, attr, initializer)
    if copy_weights_:
        for old, new in pairs:
            if old.weights:
                copy_weights(old, new)
    return new_model


_ZEROS = keras.initializers.Zeros()

# Keras layers (exact types) whose initializers go to ``add_weight`` in ``build`` and
# nowhere else. Not e.g. MultiHeadAttention, whose build makes sublayers with copies of its
# initializers (they would keep the zeros), nor subclasses, whose build may do anything.
_ZERO_INIT_TYPES = frozenset(
    {
        keras.layers.BatchNormalization,
        keras.layers.Conv1D,
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2D,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3D,
        keras.layers.Conv3DTranspose,
        keras.layers.Dense,
        keras.layers.DepthwiseConv1D,
        keras.layers.DepthwiseConv2D,
        keras.layers.EinsumDense,
        keras.layers.Embedding,
        keras.layers.GroupNormalization,
        keras.layers.LayerNormalization,
        keras.layers.PReLU,
        keras.layers.SeparableConv1D,
        keras.layers.SeparableConv2D,
    }
)


def _skip_initializers(layer) -> list[tuple[Any, str, Any]]:
    """Set the initializers of a rebuilt layer (and of its sublayers) to zeros until its
    weights are copied: drawing random values (ResNet50: 25M of them) that the copy then
    overwrites costs about a fifth of a clone. Only the Keras layers of ``_ZERO_INIT_TYPES``
    (exact types), which use their initializers for ``add_weight`` in ``build`` and nowhere
    else, are changed; any other layer draws as usual.

    Args:
        layer: a layer or model just made from its config, not built.

    Returns:
        ``[(layer, attribute, initializer)]``: what to set back once the copy is built.
    """
    out = []
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if type(sub) not in _ZERO_INIT_TYPES:
            continue
        for attr, value in list(vars(sub).items()):
            if isinstance(value, keras.initializers.Initializer):
                out.append((sub, attr, value))
                object.__setattr__(sub, attr, _ZEROS)
    return out


def replace_variable(layer, attr: str, old, value: np.ndarray, scope=None) -> Any:
    """Replace a layer's weight by a new variable of any shape, in place.

    ``layer.<attr>`` (the variable ``old``) becomes a new variable holding ``value``, with
    the same name, trainability, regularizer and constraint, at the same position in the
    layer's weight list (so saving and ``get_weights`` keep their order).

    Args:
        layer: a built layer.
        attr: the attribute that holds ``old``.
        old: the variable to replace.
        value: the new value.
        scope: a context manager to create the variable under (a distribution strategy's
            ``scope()``), or ``None``.

    Returns:
        The new variable.
    """
    import contextlib

    with scope or contextlib.nullcontext(), keras.name_scope(layer.name, caller=layer):
        new = keras.Variable(
            initializer=value.astype(old.dtype),
            shape=value.shape,
            dtype=old.dtype,
            trainable=old.trainable,
            name=old.name,
        )
    new.regularizer = old.regularizer
    new.constraint = old.constraint
    tracker = layer._tracker
    store = "trainable_variables" if old.trainable else "non_trainable_variables"
    values = tracker.config[store][1]
    index = next(i for i, v in enumerate(values) if v is old)
    values[index] = new
    tracker.stored_ids[store].discard(id(old))
    tracker.stored_ids[store].add(id(new))
    object.__setattr__(layer, attr, new)
    return new
