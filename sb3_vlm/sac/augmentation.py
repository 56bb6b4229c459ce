"""
DrQ's random-shift image augmentation for off-policy training from pixels (Kostrikov et al., 2020; Yarats et al.,
2021): each sampled frame stack is padded by ``pad`` pixels (edges repeated) and cropped back to its size at a random
offset, independently per sample, for the observations and the next observations alike. With the crop the critic
sees a slightly different view of the same state at each update, which regularises it: DrQ's main ingredient for
learning control from pixels without a pretrained encoder.
"""

from __future__ import annotations

import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space


def random_shift(images: th.Tensor, pad: int = 4, generator: th.Generator | None = None) -> th.Tensor:
    """
    Random shifts of a batch of channel-first images by up to ``pad`` pixels in each direction (replicate padding,
    then a crop at an offset drawn uniformly from ``{0, ..., 2·pad}²`` per sample), same shape and dtype (integer
    pixels stay exact).

    :param images: (N, C, H, W)
    :param pad: the largest shift in pixels (DrQ: 4 for 84×84 frames)
    :param generator: the random numbers' source (None: torch's global one)
    """
    if images.dim() != 4:
        raise ValueError(f"random_shift takes (N, C, H, W) images, got shape {tuple(images.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return images
    n, c, h, w = images.shape
    # replicate padding in the images' own dtype (uint8 frames stay 1 byte a pixel): edge rows, then edge columns
    rows = th.cat([images[:, :, :1].expand(n, c, pad, w), images, images[:, :, -1:].expand(n, c, pad, w)], dim=2)
    left, right = rows[..., :1].expand(n, c, h + 2 * pad, pad), rows[..., -1:].expand(n, c, h + 2 * pad, pad)
    padded = th.cat([left, rows, right], dim=3)
    # offsets drawn where the generator lives (a CPU generator for CUDA images)
    device = generator.device if generator is not None else images.device
    offsets = th.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    out = th.empty_like(images)
    # one slice copy per sample: a gather over (N, C, H, W) index tensors took 5x longer for 256 frames of 9x84x84
    for i, (dy, dx) in enumerate(zip(*offsets.tolist(), strict=True)):
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


class RandomShift:
    """
    :func:`random_shift` applied to the image parts of an observation batch (a tensor, or a dict of tensors whose
    image keys are shifted), as the observation space says which parts are images.

    :param observation_space: the algorithm's observation space (channel-first images, as SB3 transposes them)
    :param pad: the largest shift in pixels
    """

    def __init__(self, observation_space: spaces.Space, pad: int = 4):
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.pad = int(pad)
        if isinstance(observation_space, spaces.Dict):
            self.keys: list[str] | None = [
                k for k, s in observation_space.spaces.items() if is_image_space(s, check_channels=False)
            ]
            if not self.keys:
                raise ValueError("augmentation='shift' needs image observations; the Dict space has none")
        elif is_image_space(observation_space, check_channels=False):
            self.keys = None
        else:
            raise ValueError(f"augmentation='shift' needs image observations, got {observation_space}")

    def __call__(self, obs: th.Tensor | dict[str, th.Tensor]) -> th.Tensor | dict[str, th.Tensor]:
        if self.keys is None:
            assert isinstance(obs, th.Tensor)
            return random_shift(obs, self.pad)
        assert isinstance(obs, dict)
        return {k: random_shift(v, self.pad) if k in self.keys else v for k, v in obs.items()}

    def __repr__(self) -> str:
        return f"RandomShift(pad={self.pad})"


__all__ = ["RandomShift", "random_shift"]
