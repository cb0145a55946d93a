"""Distillation on unlabeled data: a short recovery step after any conversion.

``distill(student, teacher, data, epochs=...)`` trains ``student`` (a converted model) to
reproduce ``teacher``'s outputs (the original model) on unlabeled inputs, with
``student.fit``: any backend, ``tf.distribute`` strategies (compile and fit pick up the
strategy the student was built under), Keras callbacks.

Loss, per output, by what the teacher outputs:

- class probabilities (non-negative, summing to 1 over the last axis): the KL divergence
  ``KL(p_teacher || p_student)``;
- logits (a last axis of more than one entry otherwise): the KL divergence of the softened
  distributions at ``temperature`` ``T``, times ``T^2`` (Hinton et al. 2015);
- anything else (regression, dense maps): the mean squared error.

The teacher's outputs are computed once, in inference mode, on the given inputs (a
calibration-sized set: a few hundred to a few thousand samples), so the teacher does not run
inside the training step.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["distill", "distillation_loss"]


def _kind(y: np.ndarray) -> str:
    if y.ndim >= 2 and y.shape[-1] > 1:
        if np.all(y >= -1e-6) and np.allclose(y.sum(-1), 1.0, atol=1e-3):
            return "probabilities"
        return "logits"
    return "mse"


def distillation_loss(kind: str, temperature: float = 1.0):
    """The loss matching a student's output to a teacher's of the given kind.

    Args:
        kind: ``"probabilities"``, ``"logits"`` or ``"mse"``.
        temperature: ``T`` for logits.

    Returns:
        A ``loss(y_teacher, y_student)`` function (``keras.ops``, any backend).

    Raises:
        ValueError: for an unknown ``kind`` or a non-positive ``temperature``.
    """
    if not float(temperature) > 0:
        raise ValueError(f"distill: temperature must be > 0, got {temperature!r}.")
    t = float(temperature)
    eps = 1e-7
    if kind == "probabilities":

        def loss(y_true, y_pred):
            p = ops.clip(y_true, eps, 1.0)
            q = ops.clip(y_pred, eps, 1.0)
            return ops.sum(p * (ops.log(p) - ops.log(q)), axis=-1)

    elif kind == "logits":

        def loss(y_true, y_pred):
            p = ops.softmax(y_true / t, axis=-1)
            log_q = ops.log_softmax(y_pred / t, axis=-1)
            log_p = ops.log(ops.clip(p, eps, 1.0))
            return t * t * ops.sum(p * (log_p - log_q), axis=-1)

    elif kind == "mse":

        def loss(y_true, y_pred):
            return ops.mean(ops.square(y_true - y_pred))

    else:
        raise ValueError(f"distill: unknown output kind {kind!r}.")
    loss.__name__ = f"distill_{kind}"
    return loss


def _inputs(data, steps: int | None) -> np.ndarray:
    if isinstance(data, np.ndarray) or ops.is_tensor(data):
        x = np.asarray(data)
        return x if steps is None else x[:steps]
    out = []
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        out.append(np.asarray(item))
        if steps is not None and len(out) >= steps:
            break
    if not out:
        raise ValueError("distill: data is empty; pass unlabeled inputs of the models.")
    return np.concatenate(out, axis=0)


def distill(
    student,
    teacher,
    data,
    epochs: int = 1,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    optimizer=None,
    temperature: float = 1.0,
    steps: int | None = None,
    validation_split: float = 0.0,
    callbacks=None,
    verbose: int = 0,
):
    """Train ``student`` in place to reproduce ``teacher``'s outputs on unlabeled ``data``.

    Args:
        student: the model to train (e.g. the output of ``convert``); compiled here.
        teacher: the reference model (e.g. the original); only run in inference mode.
        data: unlabeled inputs: an array ``(n, *input_shape)``, a ``tf.data.Dataset`` or an
            iterable of batches (``x`` or ``(x, y)``; labels are ignored).
        epochs: training epochs over the data.
        batch_size: the batch size of ``fit``.
        learning_rate: Adam's learning rate when ``optimizer`` is ``None``.
        optimizer: a Keras optimizer (instance or name) instead of Adam.
        temperature: the softening temperature for logit outputs.
        steps: for iterable data, at most this many batches are read (arrays: samples).
        validation_split: passed to ``fit`` (monitor ``val_loss`` to stop early).
        callbacks: passed to ``fit``.
        verbose: passed to ``fit``.

    Returns:
        The ``History`` of ``student.fit``.

    Raises:
        ValueError: for empty, non-finite or wrongly shaped data, models whose outputs do not
            match, or invalid numbers.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"distill: epochs must be a positive int, got {epochs!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"distill: batch_size must be a positive int, got {batch_size!r}.")
    if not float(learning_rate) > 0:
        raise ValueError(f"distill: learning_rate must be > 0, got {learning_rate!r}.")
    x = _inputs(data, steps).astype(np.float32)
    if x.size == 0:
        raise ValueError("distill: data is empty; pass unlabeled inputs of the models.")
    if not np.all(np.isfinite(x)):
        raise ValueError("distill: data contains NaN or Inf; pass finite inputs.")
    want = tuple(student.inputs[0].shape[1:]) if student.inputs else None
    if want is not None and (
        len(want) != x.ndim - 1 or any(w is not None and w != g for w, g in zip(want, x.shape[1:]))
    ):
        raise ValueError(
            f"distill: data has samples of shape {x.shape[1:]}, the student takes {want}."
        )
    targets = [
        np.concatenate(parts, axis=0)
        for parts in zip(
            *(
                [np.asarray(v) for v in keras.tree.flatten(teacher(x[i : i + 256], training=False))]
                for i in range(0, len(x), 256)
            )
        )
    ]
    probe = [np.asarray(v) for v in keras.tree.flatten(student(x[:2], training=False))]
    if len(probe) != len(targets) or any(
        p.shape[1:] != t.shape[1:] for p, t in zip(probe, targets)
    ):
        raise ValueError(
            "distill: the student's outputs "
            f"{[p.shape[1:] for p in probe]} do not match the teacher's "
            f"{[t.shape[1:] for t in targets]}."
        )
    losses = [distillation_loss(_kind(t), temperature) for t in targets]
    opt = optimizer if optimizer is not None else keras.optimizers.Adam(float(learning_rate))
    student.compile(optimizer=opt, loss=losses if len(losses) > 1 else losses[0])
    y = targets if len(targets) > 1 else targets[0]
    return student.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_split=validation_split,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=True,
    )
