"""Files written by an earlier release still load and compute the same outputs.

``tests/fixtures/legacy`` holds one small converted model per method, saved by keras-eigenconv
0.1.0 (before the package was split into ``layers``/``compress``/``deploy``), and their
outputs on a fixed batch (``make_legacy_models.py`` made them).
"""

import os

import keras
import numpy as np
import pytest

import keras_eigenconv  # noqa: F401  (registers the layers)

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "legacy")
OUTPUTS = np.load(os.path.join(HERE, "outputs.npz"))
NAMES = sorted(k for k in OUTPUTS.files if k != "x")


def test_every_method_of_0_1_is_still_registered():
    from keras_eigenconv.compress import registered_methods

    methods_of_0_1 = set(NAMES) - {"svd_regularized", "decef_prepared"}
    assert len(methods_of_0_1) == 9
    assert methods_of_0_1 <= set(registered_methods())


@pytest.mark.parametrize("name", NAMES)
def test_legacy_file_loads_with_the_same_outputs(name):
    model = keras.saving.load_model(os.path.join(HERE, f"{name}.keras"))
    got = np.asarray(model(OUTPUTS["x"], training=False))
    np.testing.assert_allclose(got, OUTPUTS[name], rtol=1e-5, atol=1e-5)
