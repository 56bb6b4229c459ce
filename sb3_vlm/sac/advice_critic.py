"""Pre-training ERPv's advice critic C_V with Random Alternating Exploration (ERPv §3.3 and appendix D.1)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import VecEnv

from sb3_vlm.advisors.base import Advisor
from sb3_vlm.advisors.cache import AdviceCache
from sb3_vlm.policies.advice_critic import AdviceCritic
from sb3_vlm.sac.exploration import RandomAlternatingExploration
from sb3_vlm.sac.guided_sac import GuidedSAC
from sb3_vlm.wrappers.advice import VLMAdviceWrapper


def pretrain_advice_critic(
    env: gym.Env | VecEnv,
    advisor: Advisor | None = None,
    steps: int = 20_000,
    policy: str = "MlpPolicy",
    min_phase: int = 50,
    max_phase: int = 400,
    cache: AdviceCache | str | None = None,
    seed: int | None = None,
    verbose: int = 0,
    **sac_kwargs: Any,
) -> AdviceCritic:
    """
    Train ERPv's advice critic C_V by TD on data from Random Alternating Exploration and return it frozen.

    RAE (appendix D.1): each episode alternates phases of ``T_switch ~ U[min_phase, max_phase]`` steps in which either
    an RL actor or the advisor acts, so the data cover both the advisor's actions and the states it would not reach.
    The TD learner is SAC, trained off-policy on all of it; C_V is a frozen copy of its twin-Q critic, so
    ``C_V(o, a_v)`` scores taking the advised action in ``o``. Choice (the paper's RL actor is a separately pretrained
    DeepMDP agent): here the RL actor is that same SAC learner, trained from scratch during the ``steps``.

    :param env: the environment. With ``advisor``, a plain ``gym.Env`` (an outer ``VLMAdviceWrapper`` is replaced):
        the advisor is asked on every step. Without, the env must already carry a ``VLMAdviceWrapper``; in its
        advisor phases, steps without valid advice are acted by the RL actor.
    :param advisor: who advises (scripted, API or local VLM)
    :param steps: environment steps of pre-training (ERPv does not give a number; 20k is our default)
    :param policy: SAC policy for the learner (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"``)
    :param min_phase: shortest RAE phase
    :param max_phase: longest RAE phase
    :param cache: advice cache (path or :class:`AdviceCache`) for the advisor's answers
    :param seed: seed of SAC and of the phase draws
    :param verbose: SAC verbosity
    :param sac_kwargs: other SAC arguments (learning_rate, buffer_size, batch_size, policy_kwargs ...)
    :return: the frozen :class:`AdviceCritic`; ``critic.save(path)`` / ``AdviceCritic.load(path)`` keep it on disk
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if advisor is not None:
        if isinstance(env, VecEnv):
            raise ValueError("With advisor=..., pass a gym.Env; a VecEnv must already carry VLMAdviceWrapper envs")
        if isinstance(env, VLMAdviceWrapper):
            env = env.env
        env = VLMAdviceWrapper(env, advisor, query_every=1, cache=cache)
    exploration = RandomAlternatingExploration(min_phase, max_phase, seed=seed)
    learner = GuidedSAC(
        policy, env, method="sac", advice_exploration=exploration, seed=seed, verbose=verbose, **sac_kwargs
    )
    learner.learn(steps)
    if learner.n_advised_actions == 0:
        raise RuntimeError(
            "No advised action was executed during pre-training: the env carries no valid advice. Pass advisor=..., "
            "or wrap the env in VLMAdviceWrapper(query_every=1)."
        )
    return AdviceCritic.from_sac_critic(learner.critic, learner.policy)
