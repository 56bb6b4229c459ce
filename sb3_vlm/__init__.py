"""sb3-vlm: train small Stable-Baselines3 policies with advice from vision-language models."""

import importlib
import os
from typing import Any

# pygame/SDL installs its own SIGTERM handler when anything renders (a wrapper's env.render() fallback on a user's
# env too), and a run then ignores SIGTERM for minutes; a value the user set is kept (see sb3_vlm.envs)
os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")

from sb3_vlm._compat import MIN_SB3_VERSION as MIN_SB3_VERSION  # first: fails early on an SB3 that is too old
from sb3_vlm.a2c import GuidedA2C
from sb3_vlm.advice import ADVICE_INFO_KEY, REQUEST_INFO_KEY, Advice, AdviceRequest, PendingAdvice
from sb3_vlm.advisors import (
    AdviceCache,
    Advisor,
    BackgroundAdvisor,
    CachedAdvisor,
    CallableAdvisor,
    ConstantAdvisor,
    NearestNeighbourAdvisor,
    NoisyAdvisor,
    RandomAdvisor,
)
from sb3_vlm.buffers import (
    AdvisedDictReplayBuffer,
    AdvisedDictRolloutBuffer,
    AdvisedReplayBuffer,
    AdvisedRolloutBuffer,
)
from sb3_vlm.callbacks import AdviceMetricsCallback
from sb3_vlm.checkpoint import VLMCheckpointCallback, load_checkpoint
from sb3_vlm.finetune import LoraSettings, VLMFineTuneCallback
from sb3_vlm.guidance import ConstantCoef, KickstartingCoef, LinearDecayCoef, TrustSettings
from sb3_vlm.policies import AdviceCritic
from sb3_vlm.ppo import GuidedPPO
from sb3_vlm.sac import GuidedSAC, RandomAlternatingExploration, TeacherEpisodes, VERSettings, pretrain_advice_critic
from sb3_vlm.wrappers import VecVLMAdviceWrapper, VLMAdviceWrapper

__version__ = "0.1.0"

__all__ = [
    "ADVICE_INFO_KEY",
    "REQUEST_INFO_KEY",
    "Advice",
    "AdviceCache",
    "AdviceCritic",
    "AdviceMetricsCallback",
    "AdviceRequest",
    "AdvisedDictReplayBuffer",
    "AdvisedDictRolloutBuffer",
    "AdvisedReplayBuffer",
    "AdvisedRolloutBuffer",
    "Advisor",
    "BackgroundAdvisor",
    "CachedAdvisor",
    "CallableAdvisor",
    "ConstantAdvisor",
    "ConstantCoef",
    "GuidedA2C",
    "GuidedPPO",
    "GuidedSAC",
    "KickstartingCoef",
    "LinearDecayCoef",
    "LoraSettings",
    "MiniGridOracle",
    "NearestNeighbourAdvisor",
    "NoisyAdvisor",
    "PendingAdvice",
    "PendulumSwingUpOracle",
    "RandomAdvisor",
    "RandomAlternatingExploration",
    "TeacherEpisodes",
    "TrustSettings",
    "VERSettings",
    "VLMAdviceWrapper",
    "VLMCheckpointCallback",
    "VLMFineTuneCallback",
    "VecVLMAdviceWrapper",
    "load_checkpoint",
    "make_minigrid_env",
    "make_pendulum_env",
    "make_pixel_env",
    "pretrain_advice_critic",
]


def __getattr__(name: str) -> Any:
    # MiniGrid is an optional extra: sb3_vlm.envs imports it only when one of its names is asked for
    envs = importlib.import_module("sb3_vlm.envs")  # not `from sb3_vlm import envs`: that re-enters __getattr__
    if name in envs.__all__:
        return getattr(envs, name)
    raise AttributeError(f"module 'sb3_vlm' has no attribute {name!r}")
