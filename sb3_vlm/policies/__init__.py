"""Policy extras used by the guided algorithms: ERPv's frozen advice critic C_V and its transition model T, and a
DrQ-style pixel SAC policy (one compact encoder trained by the critic, shared with the actor)."""

from sb3_vlm.policies.advice_critic import AdviceCritic
from sb3_vlm.policies.pixel import CompactEncoder, SharedEncoderSACPolicy, encoder_frozen
from sb3_vlm.policies.transition import TransitionModel

__all__ = ["AdviceCritic", "CompactEncoder", "SharedEncoderSACPolicy", "TransitionModel", "encoder_frozen"]
