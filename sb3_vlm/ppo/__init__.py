from stable_baselines3.ppo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

from sb3_vlm.ppo.guided_ppo import GuidedPPO

__all__ = ["CnnPolicy", "GuidedPPO", "MlpPolicy", "MultiInputPolicy"]
