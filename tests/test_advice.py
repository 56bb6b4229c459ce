from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

from sb3_vlm.advice import Advice, AdviceRequest, advice_batch_from_infos, advice_to_target, image_as_uint8


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


def test_cache_key_is_exact_for_arrays_in_the_context() -> None:
    """Issue 17, item 9: the context was keyed with ``default=str``, which prints an array rounded (and elides one
    past 1,000 items), so two arrays 1e-9 apart shared a key and one answer served both."""
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    state = np.array([0.1, 0.2, 0.3])
    key = AdviceRequest(image=img, context={"goal": state}).cache_key("a")
    assert key == AdviceRequest(image=img, context={"goal": state.copy()}).cache_key("a")
    assert AdviceRequest(image=img, context={"goal": state + 1e-9}).cache_key("a") != key
    assert AdviceRequest(image=img, context={"goal": state.astype(np.float32)}).cache_key("a") != key
    assert AdviceRequest(image=img, context={"goal": state.reshape(3, 1)}).cache_key("a") != key
    long = np.arange(2_000, dtype=np.float64)
    changed = long.copy()
    changed[1_000] += 0.5  # in the part str() elides
    assert str(long) == str(changed)
    assert AdviceRequest(context={"x": long}).cache_key("a") != AdviceRequest(context={"x": changed}).cache_key("a")
    # requests with array contexts compare by value instead of raising "truth value of an array is ambiguous"
    assert AdviceRequest(image=img, context={"goal": state}) == AdviceRequest(image=img, context={"goal": state.copy()})
    assert AdviceRequest(image=img, context={"goal": state}) != AdviceRequest(image=img, context={"goal": state + 1})


def test_cache_key_depends_on_the_action_space() -> None:
    """Issue 17, item 9: the prompt states the action space (its labels, a Box's bounds), but an image request's key
    ignored it, so the answer for one space was served for another."""
    img = np.zeros((2, 2, 3), dtype=np.uint8)

    def key(space: spaces.Space | None) -> str:
        return AdviceRequest(image=img, context={"m": "go"}, action_space=space).cache_key("a")

    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    assert key(box) == key(spaces.Box(-1.0, 1.0, (2,), np.float32))
    assert len({key(None), key(box), key(spaces.Box(-2.0, 2.0, (2,), np.float32)), key(spaces.Discrete(3))}) == 4
    assert key(spaces.Discrete(3)) != key(spaces.Discrete(4))
    # per-coordinate bounds repr() prints rounded: keyed exactly
    low = np.array([-1.0, -1.0])
    a = spaces.Box(low, np.array([1.0, 2.0]), dtype=np.float64)
    b = spaces.Box(low, np.array([1.0, 2.0 + 1e-10]), dtype=np.float64)
    assert repr(a) == repr(b) and key(a) != key(b)
    # a content-keyed (lazy) view keys its space as before: MiniGrid's keys, and the suite's wrong views, are unchanged
    lazy = AdviceRequest(context={"m": "go"}, action_space=spaces.Discrete(7), content_key="grid:1")
    import hashlib
    import json

    old = hashlib.sha256(b"a\x00content-key:grid:1\x00Discrete(7)\x00" + json.dumps({"m": "go"}).encode())
    assert lazy.cache_key("a") == old.hexdigest()


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


def test_advice_is_an_immutable_value_that_copies_share() -> None:
    import copy
    import dataclasses

    mine = np.array([0.2, 0.8], dtype=np.float32)
    advice = Advice(probs=mine, source="x", raw="some long answer")
    mine[0] = 1.0  # the advisor's own array: the advice made a read-only copy
    assert advice.probs[0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="read-only"):
        advice.probs[0] = 0.5  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        advice.valid = False  # type: ignore[misc]
    # what DummyVecEnv does to every step's infos: the advice and the request come back as the same objects
    request = AdviceRequest(image=np.zeros((4, 4, 3), np.uint8), context={"m": "go"}, action_space=spaces.Discrete(2))
    info = {"vlm_advice": advice, "vlm_request": request, "episode": {"r": 1.0}}
    copied = copy.deepcopy([info])[0]
    assert copied is not info and copied["vlm_advice"] is advice and copied["vlm_request"] is request
    assert copy.copy(advice) is advice
    # changed answers are new values; pickling keeps the arrays read-only
    timed = dataclasses.replace(advice, latency=0.5)
    assert timed.latency == 0.5 and advice.latency == 0.0 and timed.probs is advice.probs
    unpickled = pickle.loads(pickle.dumps(advice))
    assert unpickled == advice and not unpickled.probs.flags.writeable  # type: ignore[union-attr]
    assert not Advice.from_dict(advice.to_dict()).probs.flags.writeable  # type: ignore[union-attr]


def test_a_lazy_request_is_keyed_by_content_and_renders_once_when_read() -> None:
    import functools

    calls: list[int] = []
    lazy = AdviceRequest(
        context={"mission": "go"},
        action_space=spaces.Discrete(3),
        content_key="view-1",
        render=functools.partial(_draw, calls),
    )
    key = lazy.cache_key("a")
    assert not calls and not lazy.rendered  # keying never renders
    assert key == AdviceRequest(
        context={"mission": "go"}, action_space=spaces.Discrete(3), content_key="view-1"
    ).cache_key("a")
    for other in (
        AdviceRequest(context={"mission": "go"}, action_space=spaces.Discrete(3), content_key="view-2"),
        AdviceRequest(context={"mission": "stop"}, action_space=spaces.Discrete(3), content_key="view-1"),
        AdviceRequest(context={"mission": "go"}, action_space=spaces.Discrete(4), content_key="view-1"),
    ):
        assert other.cache_key("a") != key
    assert lazy.cache_key("b") != key
    # the same pixels without a content key are keyed as before, by the image
    eager = AdviceRequest(image=_draw([]), context={"mission": "go"}, action_space=spaces.Discrete(3))
    assert eager.cache_key("a") != key
    # a copy sent to another process stays lazy; the image is drawn once, on first read
    sent = pickle.loads(pickle.dumps(lazy))
    assert not sent.rendered and np.array_equal(sent.image, eager.image) and sent.rendered
    assert np.array_equal(lazy.image, eager.image) and lazy.image is lazy.image and calls == [1]
    with pytest.raises(ValueError, match="not both"):
        AdviceRequest(image=eager.image, render=functools.partial(_draw, calls))


def _draw(calls: list[int]) -> np.ndarray:
    calls.append(1)
    return np.arange(48, dtype=np.uint8).reshape(4, 4, 3)


def test_requests_pickled_before_lazy_views_still_load() -> None:
    import copyreg

    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)

    class OldLayout:  # how a request pickled as the dataclass it used to be (e.g. in a COVR checkpoint) reads
        def __reduce__(self) -> tuple[Any, ...]:
            state = {"image": image, "context": {"m": "go"}, "action_space": spaces.Discrete(2), "state": 7}
            return copyreg._reconstructor, (AdviceRequest, object, None), state

    old = pickle.loads(pickle.dumps(OldLayout()))
    now = AdviceRequest(image=image, context={"m": "go"}, action_space=spaces.Discrete(2), state=7)
    assert isinstance(old, AdviceRequest) and old == now and old.state == 7 and old.content_key is None
    assert old.cache_key("a") == now.cache_key("a")


def test_a_string_action_gives_a_masked_row_not_a_crash() -> None:
    for space in (spaces.Discrete(3), spaces.Box(-1, 1, shape=(1,))):
        for advice in (
            Advice(action=np.asarray(["left"])),
            Advice(action=np.asarray(["0.5"])),
            Advice(probs=np.asarray(["a", "b", "c"])),
        ):
            target, valid = advice_to_target(advice, space)
            assert not valid and not target.any()
    infos = [{"vlm_advice": Advice(action=np.asarray(["left"]))}, {"vlm_advice": Advice(action=np.array([2]))}]
    targets, valid = advice_batch_from_infos(infos, spaces.Discrete(3))
    np.testing.assert_array_equal(valid, [0.0, 1.0])
    np.testing.assert_array_equal(targets, [[0, 0, 0], [0, 0, 1]])


def test_float_teacher_images_in_unit_range_are_scaled_not_sent_black() -> None:
    import io

    from PIL import Image

    from sb3_vlm.advisors.openai_compat import encode_image

    image = np.linspace(0.0, 1.0, 4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    expected = np.rint(image.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(image_as_uint8(image), expected)
    sent = np.asarray(Image.open(io.BytesIO(encode_image(image))))
    np.testing.assert_array_equal(sent, expected)  # was all black: a float in [0, 1] cast to uint8 is 0
    assert sent.max() == 255
    uint8 = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert image_as_uint8(uint8) is uint8
    np.testing.assert_array_equal(image_as_uint8(uint8.astype(np.int64)), uint8)
    for bad, match in (
        (image * 255, r"\[0, 1\].*got values in \[0, 255\]"),
        (image - 0.5, r"\[0, 1\]"),
        (np.full((2, 2, 3), np.nan, dtype=np.float32), "NaN"),
        (uint8.astype(np.int64) * 10, r"\[0, 255\]"),
        (np.full((2, 2, 3), "x"), "uint8"),
    ):
        with pytest.raises(ValueError, match=match):
            image_as_uint8(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_image(image * 255)
