"""DrQ's random-shift augmentation and GuidedSAC's augmentation option."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F
from gymnasium import spaces

from sb3_vlm.sac.augmentation import RandomShift, random_shift


def _images(n: int = 16, c: int = 3, size: int = 10) -> th.Tensor:
    return th.randint(0, 256, (n, c, size, size), generator=th.Generator().manual_seed(0), dtype=th.uint8)


def test_each_sample_is_its_own_image_shifted_by_at_most_pad_pixels() -> None:
    images = _images()
    pad = 2
    out = random_shift(images, pad, generator=th.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == th.uint8
    padded = F.pad(images.float(), (pad,) * 4, mode="replicate")
    offsets = []
    for i in range(len(images)):
        # exactly one window of the padded image (up to ties of a constant region) is this sample
        found = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if th.equal(padded[i, :, dy : dy + 10, dx : dx + 10], out[i].float())
        ]
        assert found, f"sample {i} is not a shifted copy of its image"
        offsets.append(found[0])
    # shifts differ across samples (one offset for all would be a crop, not an augmentation per sample)
    assert len(set(offsets)) > 3


def test_no_padding_is_the_identity_and_bad_shapes_are_refused() -> None:
    images = _images()
    assert th.equal(random_shift(images, 0), images)
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_shift(images[0], 4)
    with pytest.raises(ValueError, match="pad"):
        random_shift(images, -1)


def test_dict_observations_shift_only_their_image_keys() -> None:
    space = spaces.Dict(
        {"pixels": spaces.Box(0, 255, (3, 10, 10), np.uint8), "state": spaces.Box(-1, 1, (4,), np.float32)}
    )
    shift = RandomShift(space, pad=3)
    state = th.randn(16, 4)
    out = shift({"pixels": _images(), "state": state})
    assert isinstance(out, dict) and out["state"] is state and not th.equal(out["pixels"], _images())
    with pytest.raises(ValueError, match="image observations"):
        RandomShift(spaces.Box(-1, 1, (4,), np.float32))


def test_guided_sac_trains_on_shifted_frames_and_plain_sac_updates_without() -> None:
    """With augmentation='shift' the critic's batches are shifted copies (seen through a spy on the critic); the
    default leaves every batch as sampled, so the default stays SAC's update."""
    from sb3_vlm import GuidedSAC, VLMAdviceWrapper
    from sb3_vlm.envs.pendulum import PendulumSwingUpOracle, make_pixel_env

    def pixel_counter_env() -> VLMAdviceWrapper:
        return VLMAdviceWrapper(make_pixel_env("Pendulum-v1", size=40, frame_stack=2), PendulumSwingUpOracle())

    seen: dict[str, list[th.Tensor]] = {"on": [], "off": []}
    for mode, augmentation in (("on", "shift"), ("off", None)):
        model = GuidedSAC(
            "CnnPolicy", pixel_counter_env(), method="sac", augmentation=augmentation, learning_starts=20,
            batch_size=8, buffer_size=200, seed=0, policy_kwargs=dict(net_arch=[8]),
        )  # fmt: skip
        forward = model.critic.forward

        def spy(obs, actions, _forward=forward, _mode=mode):
            seen[_mode].append(obs.detach().clone())
            return _forward(obs, actions)

        model.critic.forward = spy  # type: ignore[method-assign]
        model.learn(40)
        stored = th.as_tensor(model.replay_buffer.observations[: model.replay_buffer.pos, 0])
        rows = {bytes(o.to(th.uint8).numpy().tobytes()) for o in stored}
        batch = seen[mode][0]
        in_buffer = [bytes(o.to(th.uint8).numpy().tobytes()) in rows for o in batch]
        if mode == "off":
            assert all(in_buffer)
        else:
            assert not all(in_buffer)  # shifted frames are not the stored ones
    assert GuidedSAC("CnnPolicy", pixel_counter_env(), augmentation="shift", buffer_size=100)._augment is not None
    with pytest.raises(ValueError, match="augmentation"):
        GuidedSAC("CnnPolicy", pixel_counter_env(), augmentation="crop", buffer_size=100)  # type: ignore[arg-type]
