from stable_baselines3.a2c.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

from sb3_vlm.a2c.guided_a2c import GuidedA2C

__all__ = ["CnnPolicy", "GuidedA2C", "MlpPolicy", "MultiInputPolicy"]
