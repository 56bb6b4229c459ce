"""Policy extras used by the guided algorithms: ERPv's frozen advice critic C_V and its transition model T."""

from sb3_vlm.policies.advice_critic import AdviceCritic
from sb3_vlm.policies.transition import TransitionModel

__all__ = ["AdviceCritic", "TransitionModel"]
