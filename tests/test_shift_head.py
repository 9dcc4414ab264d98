"""The additive shift head: identity untrained; a combination's shift is its members' sum."""

import jax
import jax.numpy as jnp
import numpy as np

from condmonge.conditions.encoding import EncodedConditions
from condmonge.models.networks import ConditionalResidualMap


def _condition(members: list[int], p: int = 3, m: int = 2) -> EncodedConditions:
    """One-hot perturbations ``members`` (of ``p``) padded to ``m`` rows, dose 1, no context."""
    features = np.zeros((m, p), np.float32)
    mask = np.zeros(m, np.float32)
    for row, j in enumerate(members):
        features[row, j], mask[row] = 1.0, 1.0
    return EncodedConditions(features, np.log10(2.0) * mask, mask, np.zeros(0, np.float32))


def test_the_shift_of_a_pair_is_the_sum_of_its_singles_and_starts_at_zero():
    net = ConditionalResidualMap(n_features=5, hidden_dim=8, n_layers=2, condition_dim=4,
                                 perturbation_hidden_dim=6, shift_head=True)  # fmt: skip
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 5))
    variables = net.init(jax.random.PRNGKey(1), x, _condition([0]))
    assert "shift" in variables["params"]
    # Untrained: both output layers start at zero, so the map is the identity.
    np.testing.assert_array_equal(net.apply(variables, x, _condition([0, 1])), x)
    # With a trained shift (random output weights) and f still zero, the effect is additive.
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    kernel = params["shift"]["out"]["kernel"]
    params["shift"]["out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(2), kernel.shape)
    trained = {**variables, "params": params}

    def effect(members):
        return net.apply(trained, x, _condition(members)) - x

    pair, single_a, single_b = effect([0, 1]), effect([0]), effect([1])
    assert float(jnp.abs(single_a).max()) > 1e-3
    np.testing.assert_allclose(pair, single_a + single_b, atol=1e-5)
    # The shift is a translation: every cell moves by the same vector.
    np.testing.assert_allclose(pair - pair[0], 0.0, atol=1e-6)
