from __future__ import annotations

import pickle

import numpy as np
import pytest
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest, advice_batch_from_infos, advice_to_target


def test_advice_roundtrip_and_pickle() -> None:
    a = Advice(action=np.array([0.5, -1.0], dtype=np.float32), probs=None, valid=True, source="x", latency=0.1, raw="r")
    b = Advice.from_dict(a.to_dict())
    np.testing.assert_allclose(b.action, a.action)
    assert (b.valid, b.source, b.raw, b.probs) == (True, "x", "r", None)
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_allclose(c.action, a.action)


def test_cache_key_depends_on_image_context_and_advisor() -> None:
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    base = AdviceRequest(image=img, context={"mission": "go"})
    key = base.cache_key("a")
    assert key == AdviceRequest(image=img.copy(), context={"mission": "go"}).cache_key("a")
    img2 = img.copy()
    img2[0, 0, 0] = 1
    assert AdviceRequest(image=img2, context={"mission": "go"}).cache_key("a") != key
    assert AdviceRequest(image=img.reshape(2, 8, 3), context={"mission": "go"}).cache_key("a") != key
    assert AdviceRequest(image=img, context={"mission": "stop"}).cache_key("a") != key
    assert base.cache_key("b") != key
    # the privileged state is not part of the key
    assert AdviceRequest(image=img, context={"mission": "go"}, state=123).cache_key("a") == key


def test_discrete_targets() -> None:
    space = spaces.Discrete(3)
    target, valid = advice_to_target(Advice(probs=np.array([2.0, 1.0, 1.0])), space)
    assert valid
    np.testing.assert_allclose(target, [0.5, 0.25, 0.25])
    target, valid = advice_to_target(Advice(action=np.array([2])), space)
    assert valid
    np.testing.assert_allclose(target, [0, 0, 1])
    for bad in (
        Advice(probs=np.array([np.nan, 0.5, 0.5])),
        Advice(probs=np.array([0.5, 0.5])),
        Advice(probs=np.array([-0.5, 1.0, 0.5])),
        Advice(probs=np.zeros(3)),
        Advice(action=np.array([3])),
        Advice(action=np.array([1.5])),
        Advice(),
        Advice.invalid(),
        None,
    ):
        target, valid = advice_to_target(bad, space)
        assert not valid
        np.testing.assert_array_equal(target, np.zeros(3))


def test_box_targets_are_clipped_and_validated() -> None:
    space = spaces.Box(-1.0, 1.0, shape=(2,))
    target, valid = advice_to_target(Advice(action=np.array([3.0, -0.5])), space)
    assert valid
    np.testing.assert_allclose(target, [1.0, -0.5])
    for bad in (Advice(action=np.array([np.inf, 0.0])), Advice(action=np.array([0.1])), Advice(probs=np.ones(2))):
        assert not advice_to_target(bad, space)[1]


def test_batch_from_infos_masks_missing_rows() -> None:
    space = spaces.Discrete(2)
    infos = [{"vlm_advice": Advice(probs=np.array([0.2, 0.8]))}, {}, {"vlm_advice": Advice.invalid()}]
    targets, valid = advice_batch_from_infos(infos, space)
    assert targets.shape == (3, 2)
    np.testing.assert_array_equal(valid, [1, 0, 0])
    np.testing.assert_allclose(targets[0], [0.2, 0.8])


def test_multidiscrete_is_rejected_clearly() -> None:
    with pytest.raises(NotImplementedError, match="Discrete and Box"):
        advice_to_target(Advice(action=np.array([0, 1])), spaces.MultiDiscrete([2, 2]))
