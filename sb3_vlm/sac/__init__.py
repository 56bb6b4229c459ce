from stable_baselines3.sac.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

from sb3_vlm.sac.advice_critic import pretrain_advice_critic
from sb3_vlm.sac.exploration import RandomAlternatingExploration, TeacherEpisodes
from sb3_vlm.sac.guided_sac import METHOD_PRESETS, GuidedSAC
from sb3_vlm.sac.terms import VERSettings

__all__ = [
    "METHOD_PRESETS",
    "CnnPolicy",
    "GuidedSAC",
    "MlpPolicy",
    "MultiInputPolicy",
    "RandomAlternatingExploration",
    "TeacherEpisodes",
    "VERSettings",
    "pretrain_advice_critic",
]
