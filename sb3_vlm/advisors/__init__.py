from sb3_vlm.advisors.background import BackgroundAdvisor
from sb3_vlm.advisors.base import Advisor, AdvisorStats
from sb3_vlm.advisors.cache import AdviceCache, CachedAdvisor
from sb3_vlm.advisors.policy import PolicyAdvisor, export_sac_actor
from sb3_vlm.advisors.scripted import (
    CallableAdvisor,
    ConstantAdvisor,
    NoisyAdvisor,
    ProjectedGridKey,
    RandomAdvisor,
)
from sb3_vlm.advisors.table import NearestNeighbourAdvisor

__all__ = [
    "AdviceCache",
    "Advisor",
    "AdvisorStats",
    "BackgroundAdvisor",
    "CachedAdvisor",
    "CallableAdvisor",
    "ConstantAdvisor",
    "NearestNeighbourAdvisor",
    "NoisyAdvisor",
    "PolicyAdvisor",
    "ProjectedGridKey",
    "RandomAdvisor",
    "export_sac_actor",
]
