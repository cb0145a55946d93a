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
- ``clone_model``: the one way to copy a model, optionally replacing layers; the copy owns
  fresh weight buffers (never the original's);
- ``replace_variable``: swap a layer's weight for a new one of another shape in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = [
    "call_input_shapes",
    "clone_model",
    "copy_weights",
    "flatten_layers",
    "input_shape",
    "is_graph_model",
    "replace_variable",
    "single_consumer_pairs",
    "walk",
]


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
    """Iterate over ``(path, layer)`` of every layer of a graph model, each layer once.

    Nested Functional/Sequential models are entered and their layers listed as
    ``outer/inner``; with ``include_models`` the nested model itself is yielded first.
    Shared layers (and shared nested models) appear once, at their first path.

    Args:
        model: a built ``keras.Model``.
        prefix: prepended to every path.
        include_models: also yield the nested graph models.

    Returns:
        An iterator of ``(path, layer)`` pairs.
    """
    seen: set[int] = set()

    def rec(m, pre):
        for layer in m.layers:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            path = pre + layer.name
            if isinstance(layer, keras.Model) and is_graph_model(layer):
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
        w_new.assign(np.array(ops.convert_to_numpy(w_old)))


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
    if not is_graph_model(model):
        raise ValueError(
            f"Model '{getattr(model, 'name', '?')}' ({type(model).__name__}) is a subclassed "
            "keras.Model, which keras.models.clone_model cannot rebuild layer by layer. Build "
            "it with the functional API or as a keras.Sequential (custom layers inside are "
            "fine), or replace its layers yourself."
        )
    pairs = []

    def clone_fn(op):
        if not isinstance(op, keras.layers.Layer):
            return op  # keras.ops operations of a functional graph
        new = replace(op) if replace is not None else None
        if new is not None:
            return new
        new = op.__class__.from_config(op.get_config())
        pairs.append((op, new))
        return new

    kwargs: dict[str, Any] = {"clone_function": clone_fn, "recursive": True}
    if call_function is not None:
        kwargs["call_function"] = call_function
    try:
        new_model = keras.models.clone_model(model, **kwargs)
    except ValueError as err:
        raise ValueError(f"keras.models.clone_model failed on '{model.name}': {err}") from err
    if copy_weights_:
        for old, new in pairs:
            if old.weights:
                copy_weights(old, new)
    return new_model


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
