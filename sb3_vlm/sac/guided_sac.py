"""GuidedSAC: SAC guided by advised actions (ERPv's VPG + VER, VARL's gated BC, COVR/DPL/APL action MSE)."""

from __future__ import annotations

import io
import os
import pathlib
import warnings
import zipfile
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, TypeVar, cast

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import get_obs_shape, is_image_space
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import SACPolicy
from torch.nn import functional as F

from sb3_vlm.advice import ADVICE_INFO_KEY, advice_to_target
from sb3_vlm.buffers import AdvisedDictReplayBuffer, AdvisedReplayBuffer, AdvisedReplayBufferSamples
from sb3_vlm.guidance.actor_guidance import gaussian_transition_loss
from sb3_vlm.guidance.schedules import CoefSchedule, LinearDecayCoef, as_coef_schedule
from sb3_vlm.guidance.trust import advice_diversity
from sb3_vlm.policies.advice_critic import AdviceCritic
from sb3_vlm.policies.pixel import SharedEncoderSACPolicy, encoder_frozen, features_once
from sb3_vlm.policies.transition import TransitionModel
from sb3_vlm.sac.augmentation import RandomShift
from sb3_vlm.sac.exploration import AdvisorTurns, RandomAlternatingExploration, TeacherEpisodes
from sb3_vlm.sac.terms import (
    ActionMSETerm,
    AdvantageGate,
    Gate,
    GatedBCTerm,
    GuidanceBatch,
    GuidanceTerm,
    MinMaxGate,
    RandomGate,
    VERSettings,
    VERTerm,
    VPGTerm,
    ver_settings,
)
from sb3_vlm.wrappers.selection import bind_learner
from sb3_vlm.wrappers.vec_advice import current_advice_of

SelfGuidedSAC = TypeVar("SelfGuidedSAC", bound="GuidedSAC")

Guidance = Literal["vpg", "gated_bc", "mse", "annealed_mse", "random_gate", "none"]
#: who may act instead of the actor during data collection (``advice_exploration=``)
AdviceExploration = AdvisorTurns | Literal["teacher_episodes", "off"]
GUIDANCES: tuple[str, ...] = ("vpg", "gated_bc", "mse", "annealed_mse", "random_gate", "none")

#: each method's defaults; any explicit argument overrides them
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    # ERPv: VPG with λ1 = 10 and VER with λ2 = 10 (§4.1, appendix E.2)
    "erpv": dict(guidance="vpg", guidance_coef=10.0, ver=True),
    # VARL: gated BC, λ in the robust 10-50 range (lower end), removed after N_s = 30k steps, batches of advised rows
    "varl": dict(guidance="gated_bc", guidance_coef=10.0, ver=False, guidance_cutoff=30_000, advice_batch=True),
    # COVR eq. 4 and DPL: λ‖a_v − a_r‖² with λ = 2 (COVR §4, CARLA; COVR uses λ = 1 on DMControl)
    "covr": dict(guidance="mse", guidance_coef=2.0, ver=False),
    "dpl": dict(guidance="mse", guidance_coef=2.0, ver=False),
    # APL: λ = 2, −0.01 every 200 training steps, floor 0.1 (COVR appendix)
    "apl": dict(guidance="annealed_mse", guidance_coef=None, ver=False),
    # ERPv's RSF baseline: ERPv with a random Q_f ~ U[0, 1] (the VPG ablation; VER kept)
    "rsf": dict(guidance="random_gate", guidance_coef=10.0, ver=True),
    "sac": dict(guidance="none", guidance_coef=0.0, ver=False),
}

#: ``buffer_size=None``: SB3's default for vector observations, RAD's and ERPv's 100k transitions for images
DEFAULT_BUFFER_SIZE, IMAGE_BUFFER_SIZE = 1_000_000, 100_000
#: the share of the memory available when the model is built that a ``buffer_size=None`` buffer may take
BUFFER_MEMORY_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes of memory available now (psutil's ``available``; without psutil, the free pages), or None if unknown."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):  # not POSIX
        return None


def transition_nbytes(
    observation_space: spaces.Space, action_space: spaces.Space, optimize_memory_usage: bool = False
) -> int:
    """
    Bytes one transition takes in an advised replay buffer: the observation twice (``observations`` and
    ``next_observations``; once with ``optimize_memory_usage``), the action, reward, done and timeout columns and the
    advised action with its validity.

    :param observation_space: the env's observation space (a ``Dict``: the sum of its entries)
    :param action_space: the env's (Box) action space
    :param optimize_memory_usage: SB3's option that stores each observation once
    """
    subspaces = observation_space.spaces.values() if isinstance(observation_space, spaces.Dict) else [observation_space]
    obs = 0
    for sub in subspaces:
        shape = get_obs_shape(sub)
        assert isinstance(shape, tuple)  # Dict entries are not nested
        obs += int(np.prod(shape)) * np.dtype(sub.dtype).itemsize
    action_dim = int(np.prod(action_space.shape or (1,)))
    action = action_dim * (4 if np.dtype(action_space.dtype) == np.float64 else np.dtype(action_space.dtype).itemsize)
    # float32: reward, done, timeout, advice validity, the advised action
    return obs * (1 if optimize_memory_usage else 2) + action + 4 * (4 + action_dim)


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


class GuidedSAC(SAC):
    """
    Soft Actor-Critic whose actor (and entropy coefficient) are guided by advised actions from
    :class:`~sb3_vlm.wrappers.VLMAdviceWrapper` (``info["vlm_advice"]``), stored next to each transition by
    :class:`~sb3_vlm.buffers.AdvisedReplayBuffer`. The saved policy is a plain SAC policy.

    Methods (``method=``), each a preset of the arguments below:

    - ``"erpv"``: ERPv (Xu et al., "Enhancing Visual RL with Partially Reliable Knowledge from VLMs"). VPG, eq. 3-4:
      ``L_π + λ1 · mean_i Q_f,i ‖a_v,i − a_π,i‖²``; VER, eq. 5-7 and 12-14: a transition model T on the critic's
      features gives ``G = 1/‖s_{t+1} − T(s_t, a_v)‖²``, a target ``ᾱ`` and the α loss
      ``L_α + λ2 · mean_i Q_f,i (α − ᾱ_i)²``. The gate ``Q_f`` is by default the advantage gate
      (:class:`~sb3_vlm.sac.terms.AdvantageGate`, a scale-free Q-filter after Nair et al. 2018):
      ``Q_f = clip((Q(s, a_v) − Q(s, a_π)) / σ, 0, 1)`` with both actions judged by one critic (C_V if given, else
      the RL critic) and σ a running mean of ``|Q(s, a_v) − Q(s, a_π)|``. It needs no pre-trained advice critic
      and works for any reward sign and scale. ``vpg_gate="minmax"`` is the paper's
      ``Q_f = max(0, scale(Q_v) − scale(Q_r))`` with Q_v from a frozen advice critic C_V
      (:func:`~sb3_vlm.sac.pretrain_advice_critic`); the paper's VER is ``ver=VERSettings(gated=False)``.
    - ``"varl"``: VARL (arXiv 2509.21126): gated behaviour cloning ``−log π(a_v|s)`` where the policy's greedy action
      is not already the advised one, removed after ``guidance_cutoff`` (N_s = 30k) steps; by default also only where
      the critic rates the advice above the policy's action (``bc_value_gate``).
    - ``"covr"`` / ``"dpl"``: ``λ ‖a_v − a_r‖²`` with λ = 2 (COVR eq. 4; COVR's VLM fine-tuning is a callback).
    - ``"apl"``: the same with λ annealed 2 → −0.01 per 200 gradient steps → 0.1.
    - ``"rsf"``: ERPv with a random ``Q_f ~ U[0, 1]`` (ERPv's RSF baseline). ``"sac"``: no guidance.

    ERPv's ablations (table 3), on top of the paper's gate (``vpg_gate="minmax"``, C_V): M1 ``guidance="none"``; M2
    ``guidance="mse", guidance_coef=10`` (VPG without Q_f); M3 ``ver=False``; M4-M8 through
    :class:`~sb3_vlm.sac.VERSettings`: M4 ``confidence="action_mse"``, M5 ``confidence="policy_action"``, M6
    ``alpha_zero_after=50_000``, M7 ``alpha_loss=False``, M8 ``next_state="predicted"``; M9 ``vpg_gate="minmax",
    advice_critic="rl"``.

    All SAC arguments are those of :class:`stable_baselines3.SAC`, except the replay buffer's default size;
    ``n_steps > 1`` is not supported.

    :param buffer_size: transitions in the replay buffer. ``None`` (default): SB3's 1M for vector observations, 100k
        (RAD's and ERPv's) for image observations, and fewer, with a warning, where that would take more than half
        the memory available when the model is built (SB3's 1M default of 84×84×9 frames is a 59 GiB array, issue
        16). A size given, or a ``None`` that cannot even hold one batch, is checked against the memory available
        and refused at once (a ``ValueError`` naming ``buffer_size``) when it cannot fit. A loaded model keeps its
        saved size

    Extra arguments (``None`` means the method's default):

    :param method: ``"erpv"`` (default), ``"varl"``, ``"covr"``, ``"dpl"``, ``"apl"``, ``"rsf"`` or ``"sac"``
    :param guidance: actor guidance: ``"vpg"``, ``"gated_bc"``, ``"mse"``, ``"annealed_mse"``, ``"random_gate"``,
        ``"none"``
    :param guidance_coef: λ (λ1 for VPG): a float or a :class:`~sb3_vlm.guidance.CoefSchedule` of the number of
        gradient steps
    :param guidance_cutoff: environment steps after which the guidance term is dropped (VARL's N_s). ``None``: the
        method's default (30k for VARL, never otherwise); ``0`` or negative: never
    :param advice_critic: ERPv's C_V: an :class:`~sb3_vlm.policies.AdviceCritic`, which then judges both actions in
        the advantage gate (and the advised action in ``"minmax"``). Without one (``None`` or ``"rl"``) the RL critic
        is used; with ``vpg_gate="minmax"`` that is ablation M9, and ``None`` warns (``"rl"`` is M9 on purpose)
    :param vpg_gate: the gate ``Q_f`` of the VPG term and of VER: ``"advantage"`` (default, see above; a fresh
        :class:`~sb3_vlm.sac.terms.AdvantageGate` instance sets its EMA rate, and its state is then this model's) or
        ``"minmax"`` (ERPv's joint min-max). ``guidance="random_gate"`` replaces it by ``Q_f ~ U[0, 1]``
    :param vpg_reference: ``"minmax"`` only: which critic scores the policy's own action: ``"rl"``
        (ERPv: ``Q_r = C_R(o, a_r)``) or ``"advice"`` (``Q_r = C_V(o, a_r)``). With ERPv's choice an untrained C_R
        (≈ 0) looks better than a trained C_V wherever rewards are negative (e.g. Pendulum), which keeps Q_f at 0 until
        C_R has learned the reward scale
    :param ver: VLM-guided entropy regularisation (needs ``ent_coef="auto"``): a
        :class:`~sb3_vlm.sac.VERSettings`, ``True`` (default settings), ``False`` (off) or ``None`` (the method's
        default: on for ERPv and RSF)
    :param bc_loss: gated BC as ``"nll"`` (``−log π(a_v|s)``, advised actions pulled inside the bounds by 1e-3) or
        ``"mse"`` (squared distance to the policy's mean action, defined at the bounds)
    :param bc_gate_threshold: RMS distance (in [-1, 1] action units) between the advised and the greedy action
        below which the policy "already agrees" and BC is off
    :param bc_value_gate: gated BC also skips rows where the critic rates the advice no better than the policy's
        action, ``Q(s, a_v) <= Q(s, a_π)`` (default on; ``False`` is VARL's gate)
    :param advice_batch: draw the guidance batch only from transitions that carry advice (VARL's small guidance
        buffer; useful when the advisor is queried rarely), instead of the SAC batch
    :param advice_warmup: during ``learning_starts``, act with the advised action where there is one, instead of
        uniform noise (ERPv C.5 and COVR do this); off by default
    :param advice_exploration: act with the advisor's actions in some phases of training:
        :class:`~sb3_vlm.sac.RandomAlternatingExploration` (ERPv's RAE, used to pre-train C_V), or
        :class:`~sb3_vlm.sac.TeacherEpisodes` (``"teacher_episodes"``: whole episodes by the advisor while they
        return more than the learner's; with advice that ignores the view, see ``min_advice_diversity``, the
        advisor acts no new episode; nor before any advice has arrived). ``"off"``: the actor always acts. None:
        the method's default (``"off"`` for every method)
    :param advice_key: the info key of the advice
    :param min_advice_diversity: the least share of the last ``diversity_window`` advised transitions whose advice
        is more than 5 % of the action range away from their median (in some coordinate) for the guidance (and VER)
        to apply at all; below it the advice ignores the view (ERPv's constant "worst model", a VLM that says the
        same whatever it sees), teaches nothing a state-independent bias would not, and the update is SAC's. 0: off.
        The same check as GuidedPPO's (:class:`~sb3_vlm.guidance.trust.TrustSettings`)
    :param diversity_window: the advised transitions (the latest in the replay buffer) the diversity is measured on
    :param augmentation: ``"shift"``: DrQ's random shifts of the sampled image observations and next observations
        by up to ``augmentation_pad`` pixels (:mod:`sb3_vlm.sac.augmentation`), for learning from pixels; None
        (default): SAC's updates unchanged
    :param augmentation_pad: the largest shift in pixels (DrQ: 4 for 84×84 frames)

    Policies: SAC's ``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"``, and ``"DrQPolicy"``
    (:class:`~sb3_vlm.policies.SharedEncoderSACPolicy`: one compact encoder trained by the critic and read by the
    actor without gradients, as DrQ does), for image observations.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {  # type: ignore[misc]
        **SAC.policy_aliases,
        "DrQPolicy": SharedEncoderSACPolicy,
    }
    advice_critic: AdviceCritic | None
    transition_model: TransitionModel | None
    transition_optimizer: th.optim.Optimizer | None
    advice_gate: Gate
    guidance_term: GuidanceTerm | None
    ver_term: VERTerm | None
    replay_buffer: AdvisedReplayBuffer | AdvisedDictReplayBuffer  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[SACPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int | None = None,
        learning_starts: int = 100,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        ent_coef: str | float = "auto",
        target_update_interval: int = 1,
        target_entropy: str | float = "auto",
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        use_sde_at_warmup: bool = False,
        method: str = "erpv",
        guidance: Guidance | None = None,
        guidance_coef: float | CoefSchedule | None = None,
        guidance_cutoff: int | None = None,
        advice_critic: AdviceCritic | Literal["rl"] | None = None,
        vpg_gate: Literal["advantage", "minmax"] | Gate = "advantage",
        vpg_reference: Literal["rl", "advice"] = "rl",
        ver: bool | VERSettings | None = None,
        bc_loss: Literal["nll", "mse"] = "nll",
        bc_gate_threshold: float = 0.1,
        bc_value_gate: bool = True,
        advice_batch: bool | None = None,
        advice_warmup: bool = False,
        advice_exploration: AdviceExploration | None = None,
        advice_key: str = ADVICE_INFO_KEY,
        min_advice_diversity: float = 0.05,
        diversity_window: int = 512,
        augmentation: Literal["shift"] | None = None,
        augmentation_pad: int = 4,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        if method not in METHOD_PRESETS:
            raise ValueError(f"method must be one of {sorted(METHOD_PRESETS)}, got {method!r}")
        preset = METHOD_PRESETS[method]
        guidance = preset["guidance"] if guidance is None else guidance
        if guidance not in GUIDANCES:
            raise ValueError(f"guidance must be one of {GUIDANCES}, got {guidance!r}")
        if guidance_coef is None:
            guidance_coef = preset["guidance_coef"] if preset["guidance"] == guidance else None
        if guidance_coef is None:
            guidance_coef = LinearDecayCoef() if guidance == "annealed_mse" else 10.0 if guidance != "mse" else 2.0
        as_coef_schedule(guidance_coef, "guidance_coef")  # validate before building anything
        if guidance_cutoff is None:
            guidance_cutoff = preset.get("guidance_cutoff")
        for name, value, allowed in (
            ("vpg_reference", vpg_reference, ("rl", "advice")),
            ("bc_loss", bc_loss, ("nll", "mse")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if advice_critic is not None and advice_critic != "rl" and not isinstance(advice_critic, AdviceCritic):
            raise TypeError(f"advice_critic must be an AdviceCritic, 'rl' or None, got {type(advice_critic).__name__}")
        if not isinstance(vpg_gate, Gate) and vpg_gate not in ("advantage", "minmax"):
            raise ValueError(f"vpg_gate must be 'advantage', 'minmax' or a Gate, got {vpg_gate!r}")
        if n_steps != 1:
            raise ValueError("GuidedSAC does not support n-step returns (n_steps > 1) yet")

        self.method = method
        self.guidance = guidance
        self.guidance_coef = guidance_coef
        self.guidance_cutoff = guidance_cutoff if guidance_cutoff is not None and guidance_cutoff > 0 else None
        self.vpg_reference = vpg_reference
        # the gate is data, not a module: the zip saves it with its running state (the advantage scale σ)
        if guidance == "random_gate":
            self.advice_gate = RandomGate()
        elif isinstance(vpg_gate, Gate):
            self.advice_gate = vpg_gate
        else:
            self.advice_gate = AdvantageGate() if vpg_gate == "advantage" else MinMaxGate(vpg_reference)
        self.ver = ver_settings(ver, preset["ver"])
        self.bc_loss = bc_loss
        self.bc_gate_threshold = float(bc_gate_threshold)
        self.bc_value_gate = bool(bc_value_gate)
        self.advice_batch = bool(preset.get("advice_batch", False) if advice_batch is None else advice_batch)
        self.advice_warmup = advice_warmup
        if advice_exploration is None:
            advice_exploration = preset.get("advice_exploration", "off")
        if advice_exploration == "teacher_episodes":
            advice_exploration = TeacherEpisodes(seed=seed)
        elif advice_exploration == "off":
            advice_exploration = None
        elif not isinstance(advice_exploration, AdvisorTurns):
            raise ValueError(
                "advice_exploration must be None, 'teacher_episodes', 'off' or an AdvisorTurns (e.g. "
                f"RandomAlternatingExploration, TeacherEpisodes), got {advice_exploration!r}"
            )
        self.advice_exploration = advice_exploration
        self.advice_key = advice_key
        if augmentation not in (None, "shift"):
            raise ValueError(f"augmentation must be 'shift' or None, got {augmentation!r}")
        if not (isinstance(augmentation_pad, int) and augmentation_pad >= 0):
            raise ValueError(f"augmentation_pad must be an int >= 0 (pixels), got {augmentation_pad!r}")
        self.augmentation, self.augmentation_pad = augmentation, augmentation_pad
        if not 0.0 <= min_advice_diversity < 1.0:
            raise ValueError(f"min_advice_diversity must be in [0, 1), got {min_advice_diversity}")
        if diversity_window < 2:
            raise ValueError(f"diversity_window must be >= 2 transitions, got {diversity_window}")
        self.min_advice_diversity, self.diversity_window = float(min_advice_diversity), int(diversity_window)
        self._augment: RandomShift | None = None
        #: set False to hold the guidance loss off (e.g. COVR's cold start before the first fine-tuning rounds)
        self.guidance_enabled = True
        #: gradient steps taken with the guidance term on: the clock of a guidance_coef schedule
        self._n_guided_updates = 0
        # the module itself is excluded from the zip's data; its constructor kwargs are not, to rebuild it on load
        self.advice_critic = advice_critic if isinstance(advice_critic, AdviceCritic) else None
        self.advice_critic_kwargs = self.advice_critic.constructor_kwargs() if self.advice_critic is not None else None
        self.use_rl_critic_for_advice = advice_critic == "rl"
        self.transition_model = None
        self.transition_optimizer = None
        self.guidance_term = None
        self.ver_term = None
        self.n_advised_actions = 0
        self._advice_seen: bool | None = None

        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            buffer_size=DEFAULT_BUFFER_SIZE if buffer_size is None else buffer_size,  # sized below
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            action_noise=action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            ent_coef=ent_coef,
            target_update_interval=target_update_interval,
            target_entropy=target_entropy,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            use_sde_at_warmup=use_sde_at_warmup,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        if _init_setup_model:
            self.buffer_size = self._fitting_buffer_size(buffer_size)
            self._setup_model()

    def _fitting_buffer_size(self, requested: int | None) -> int:
        """
        The replay buffer's size: ``requested`` if it fits in the memory available now, else a ``ValueError`` naming
        ``buffer_size`` (before anything is allocated); for ``None``, the default of the observations' kind, fewer
        where it would take more than :data:`BUFFER_MEMORY_SHARE` of that memory.
        """
        per_transition = transition_nbytes(self.observation_space, self.action_space, self.optimize_memory_usage)
        available = available_memory()
        shape = getattr(self.observation_space, "shape", None)
        what = f"{shape} {self.observation_space.dtype} observations" if shape else "Dict observations"
        stored = (
            "each stored once (optimize_memory_usage)"
            if self.optimize_memory_usage
            else "each stored twice, as obs and next_obs"
        )
        hint = (
            "or optimize_memory_usage=True with replay_buffer_kwargs=dict(handle_timeout_termination=False) to store "
            "each frame once"
        )
        if requested is None:
            subspaces = (
                self.observation_space.spaces.values()
                if isinstance(self.observation_space, spaces.Dict)
                else [self.observation_space]
            )
            images = any(is_image_space(sub, check_channels=False) for sub in subspaces)
            limit = IMAGE_BUFFER_SIZE if images else DEFAULT_BUFFER_SIZE
            if available is None or limit * per_transition <= BUFFER_MEMORY_SHARE * available:
                return limit
            fits = int(BUFFER_MEMORY_SHARE * available // per_transition)
            if fits < self.batch_size:
                raise ValueError(
                    f"No replay buffer of {what} ({per_transition:,} bytes a transition, {stored}) fits in the "
                    f"{_gib(available)} of memory available: not even one batch of {self.batch_size}. Free memory, "
                    f"pass a smaller buffer_size and batch_size, {hint}"
                )
            warnings.warn(
                f"GuidedSAC: buffer_size={fits:,} transitions of {what} ({_gib(fits * per_transition)}, half the "
                f"{_gib(available)} of memory available; {limit:,} would need {_gib(limit * per_transition)}). Pass "
                "buffer_size=... to choose",
                stacklevel=3,
            )
            return fits
        needed = requested * per_transition
        if available is not None and needed > available:
            raise ValueError(
                f"buffer_size={requested:,} transitions of {what} need {_gib(needed)} ({stored}), but only "
                f"{_gib(available)} of memory are available: pass buffer_size={int(available // per_transition):,} "
                f"or less, buffer_size=None for one that fits, {hint}"
            )
        return requested

    def _setup_model(self) -> None:
        if self.replay_buffer_class is None:
            dict_obs = isinstance(self.observation_space, spaces.Dict)
            self.replay_buffer_class = AdvisedDictReplayBuffer if dict_obs else AdvisedReplayBuffer
        if not issubclass(self.replay_buffer_class, (AdvisedReplayBuffer, AdvisedDictReplayBuffer)):
            raise TypeError(
                "GuidedSAC needs a replay buffer that stores advice (AdvisedReplayBuffer / AdvisedDictReplayBuffer), "
                f"got {self.replay_buffer_class.__name__}"
            )
        self.replay_buffer_kwargs = {"advice_key": self.advice_key, **self.replay_buffer_kwargs}
        super()._setup_model()
        # models saved before augmentation existed have neither attribute
        augmentation = getattr(self, "augmentation", None)
        self._augment = None if augmentation is None else RandomShift(self.observation_space, self.augmentation_pad)

        if self.ver is not None and self.log_ent_coef is None:
            raise ValueError("VER regularises a learned entropy coefficient: use ent_coef='auto' or pass ver=False")
        if self.advice_critic is None and self.advice_critic_kwargs is not None:
            # loading a saved model: rebuild C_V so set_parameters() can fill in its weights
            self.advice_critic = AdviceCritic(**self.advice_critic_kwargs)
        if self.advice_critic is not None:
            self.advice_critic = self.advice_critic.to(self.device).freeze()
        gate_used = self.guidance == "vpg" or (self.ver is not None and self.ver.gated)
        m9_by_default = self.advice_critic is None and not self.use_rl_critic_for_advice
        if isinstance(self.advice_gate, MinMaxGate) and gate_used and m9_by_default:
            warnings.warn(
                "GuidedSAC(vpg_gate='minmax') without an advice critic: Q_v comes from the RL critic (ERPv ablation "
                "M9). Pre-train one with sb3_vlm.sac.pretrain_advice_critic(), pass advice_critic='rl' to silence "
                "this, or use the default vpg_gate='advantage', which needs no advice critic.",
                stacklevel=2,
            )
        if self.ver is not None:
            features_dim = self.critic.features_extractor.features_dim
            action_dim = int(np.prod(self.action_space.shape))  # type: ignore[arg-type]
            # T's initialisation draws from its own RNG stream: the policy's random numbers stay SAC's, so a run
            # without advice is bit-identical to SAC
            with th.random.fork_rng(devices=[]):
                if self.seed is not None:
                    th.manual_seed(self.seed + 1)
                transition_model = TransitionModel(features_dim, action_dim, self.ver.transition_net_arch)
            self.transition_model = transition_model.to(self.device)
            self.transition_optimizer = self.policy.optimizer_class(  # type: ignore[call-arg]
                self.transition_model.parameters(), lr=self.lr_schedule(1), **self.policy.optimizer_kwargs
            )
            self.ver_term = VERTerm(self.ver, self.transition_model, self.advice_gate)
        self.guidance_term = self._make_guidance_term()

    def _make_guidance_term(self) -> GuidanceTerm | None:
        if self.guidance in ("vpg", "random_gate"):
            return VPGTerm(self.advice_gate)
        if self.guidance in ("mse", "annealed_mse"):
            return ActionMSETerm()
        if self.guidance == "gated_bc":
            return GatedBCTerm(self.bc_gate_threshold, self.bc_loss, self.bc_value_gate)
        return None

    # ------------------------------------------------------------------ acting

    def _advised_actions_now(self, n_envs: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Advice for the observations about to be acted on (from the wrapper's ``current_advice``), env units."""
        assert self.env is not None
        try:
            advices = current_advice_of(self.env)
        except AttributeError:
            warnings.warn("advice_warmup/advice_exploration need a VLMAdviceWrapper in the env; disabled", stacklevel=3)
            self.advice_warmup, self.advice_exploration = False, None
            return None
        rows = [advice_to_target(a, self.action_space) for a in advices]
        return np.stack([r[0] for r in rows]), np.asarray([r[1] for r in rows], dtype=bool)

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        action, buffer_action = super()._sample_action(learning_starts, action_noise, n_envs)
        use_advice = np.zeros(n_envs, dtype=bool)
        self._acted_on_advice = use_advice  # which envs act on advice this step (none, unless replaced below)
        if self.advice_warmup and self.num_timesteps < learning_starts:
            use_advice[:] = True
        # (teacher episodes wait for the first advice: an env without an advice wrapper just trains as SAC)
        explore = isinstance(self.advice_exploration, RandomAlternatingExploration) or bool(self._advice_seen)
        if self.advice_exploration is not None and explore:
            use_advice |= self.advice_exploration.advisor_mask(n_envs)
        if use_advice.any():
            advised = self._advised_actions_now(n_envs)
            if advised is not None:
                targets, valid = advised
                replace = use_advice & valid  # no advice here: keep the policy's (or warm-up's random) action
                action, buffer_action = action.copy(), buffer_action.copy()
                action[replace] = targets[replace]
                buffer_action[replace] = self.policy.scale_action(targets[replace])
                self.n_advised_actions += int(replace.sum())
                self._acted_on_advice = replace
        return action, buffer_action

    def _store_transition(self, replay_buffer, buffer_action, new_obs, reward, dones, infos) -> None:  # type: ignore[no-untyped-def]
        if self._advice_seen is None:
            self._advice_seen = any(self.advice_key in info for info in infos)
            if not self._advice_seen and self.guidance != "none":
                warnings.warn(
                    f"No '{self.advice_key}' in the env's infos: wrap the env in sb3_vlm.VLMAdviceWrapper. "
                    "Until advice arrives GuidedSAC trains as plain SAC.",
                    stacklevel=2,
                )
        if self.advice_exploration is not None:
            # a new teacher episode only for advice that depends on the view (computed only when one may start)
            done = np.asarray(dones, dtype=bool)
            min_diversity = getattr(self, "min_advice_diversity", 0.0)
            allowed = not done.any() or min_diversity <= 0 or self.advice_diversity() >= min_diversity
            # the env's own rewards (SB3 stores VecNormalize's original ones too), and which envs the advice acted in
            vec_normalize = self._vec_normalize_env
            original = vec_normalize.get_original_reward() if vec_normalize is not None else reward
            acted = getattr(self, "_acted_on_advice", None)
            self.advice_exploration.step(done, np.asarray(original), allowed=allowed, advised=acted)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)

    # ------------------------------------------------------------------ guidance terms

    @property
    def guidance_active(self) -> bool:
        """Whether the guidance loss is applied now (method, cold-start switch and cutoff)."""
        if self.guidance == "none" or not self.guidance_enabled:
            return False
        return self.guidance_cutoff is None or self.num_timesteps < self.guidance_cutoff

    def advice_diversity(self) -> float:
        """
        :func:`~sb3_vlm.guidance.trust.advice_diversity` of the advised transitions among the latest
        ``diversity_window`` of the replay buffer that the learner acted in (advice in [-1, 1] units, so 5 % of the
        range is 0.1); 1.0 while fewer than two are known.

        Transitions the advisor acted in (teacher episodes, warm-up on advice: their stored action *is* the advice)
        are left out: they follow the teacher's own trajectory, where a good teacher may say nearly the same thing
        everywhere (one that balances an inverted pendulum asks for ~0 on 99 % of its steps), so they cannot tell
        it from a teacher that ignores the view. Where the latest transitions hold fewer than two of the learner's,
        the last value measured on the learner's stands (before there is one: all advised transitions count, as
        during a warm-up on advice).
        """
        buf = self.replay_buffer
        if buf is None:
            return 1.0
        rows = max(self.diversity_window // buf.n_envs, 1)
        pos = buf.pos
        index = np.arange(pos - rows, pos) % buf.buffer_size if buf.full else np.arange(max(pos - rows, 0), pos)
        if index.size == 0:
            return 1.0
        advice = buf.advice_actions[index].reshape(index.size * buf.n_envs, -1)
        valid = buf.advice_valid[index].reshape(-1) > 0
        advisor_acted = np.all(np.abs(buf.actions[index].reshape(advice.shape) - advice) <= 1e-5, axis=1)
        learner = valid & ~advisor_acted
        if learner.sum() >= 2:
            self._last_diversity: float | None = advice_diversity(advice[learner], discrete=False, scale=2.0)
            return self._last_diversity
        last = getattr(self, "_last_diversity", None)
        if last is not None:
            return last
        return advice_diversity(advice[valid], discrete=False, scale=2.0) if valid.sum() >= 2 else 1.0

    @property
    def current_guidance_coef(self) -> float:
        schedule = as_coef_schedule(self.guidance_coef, "guidance_coef")  # checks each value of a custom schedule
        # a schedule counts guided gradient steps only (as GuidedPPO / A2C count guided updates), so APL's decay does
        # not run down during COVR's cold start; a model saved before this counter counts all of its steps
        return float(schedule(getattr(self, "_n_guided_updates", self._n_updates), self._current_progress_remaining))

    def _critic_features(self, obs: PyTorchObs) -> th.Tensor:
        with th.no_grad():
            return self.critic.extract_features(obs, self.critic.features_extractor)

    def _min_q(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """The RL critic's ``min_k Q_k(obs, actions)``, (batch, 1), without gradient (the guidance gates' C_R)."""
        with th.no_grad():
            return th.min(th.cat(self.critic(obs, actions), dim=1), dim=1, keepdim=True)[0]

    def _guidance_batch(
        self,
        obs: PyTorchObs,
        actions_pi: th.Tensor,
        dist_params: tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]],
        advice_actions: th.Tensor,
        valid: th.Tensor,
    ) -> GuidanceBatch:
        return GuidanceBatch(
            obs,
            actions_pi,
            dist_params,
            self.actor.action_dist,
            advice_actions,
            valid,
            critic=self._min_q,
            advice_critic=self.advice_critic.q_value if self.advice_critic is not None else None,
        )

    def _advised_guidance_batch(self, batch_size: int) -> GuidanceBatch | None:
        """A guidance batch of advised transitions only (VARL's guidance buffer); None while there is none."""
        data = cast(
            AdvisedReplayBufferSamples | None, self.replay_buffer.sample_advised(batch_size, self._vec_normalize_env)
        )
        if data is None:
            return None
        mean_actions, log_std, dist_kwargs = self.actor.get_action_dist_params(data.observations)
        actions_pi, _ = self.actor.action_dist.log_prob_from_params(mean_actions, log_std, **dist_kwargs)
        return self._guidance_batch(
            data.observations, actions_pi, (mean_actions, log_std, dist_kwargs), data.advice_actions, data.advice_valid
        )

    def _train_transition_model(self, replay_data: AdvisedReplayBufferSamples) -> tuple[th.Tensor, th.Tensor, float]:
        """One step of ERPv eq. 12 on the critic's (detached) features; returns them and the loss."""
        assert self.transition_model is not None and self.transition_optimizer is not None
        features = self._critic_features(replay_data.observations)
        next_features = self._critic_features(replay_data.next_observations)
        mu, log_sigma = self.transition_model(features, replay_data.actions)
        transition_loss = gaussian_transition_loss(mu, log_sigma, next_features).mean()
        self.transition_optimizer.zero_grad()
        transition_loss.backward()
        self.transition_optimizer.step()
        return features, next_features, transition_loss.item()

    # ------------------------------------------------------------------ training

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """
        Adapted from ``SAC.train`` (SB3 2.x). Additions are marked ``sb3-vlm``: the transition model's update (ERPv
        eq. 12), the VER term in the α loss (eq. 7), M6's α = 0, and the guidance term in the actor loss (ERPv eq. 4 /
        COVR eq. 4 / VARL's gated BC), each a call to a term of :mod:`sb3_vlm.sac.terms`. The critic update is SB3's.
        """
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizers learning rate
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]
        if self.transition_optimizer is not None:  # sb3-vlm
            optimizers += [self.transition_optimizer]

        # Update learning rate according to lr schedule
        self._update_learning_rate(optimizers)

        ent_coef_losses, ent_coefs = [], []
        actor_losses, critic_losses = [], []
        # sb3-vlm
        buffer = self.replay_buffer
        buffer.resolve_pending()  # rows whose non-blocking advice has arrived since the last phase get it now
        # advice that ignores the view is not imitated, nor does it steer the entropy (see min_advice_diversity)
        min_diversity = getattr(self, "min_advice_diversity", 0.0)  # 0: models saved before the check
        diversity = self.advice_diversity() if min_diversity > 0 else 1.0
        diverse = diversity >= min_diversity
        guide = self.guidance_active and self.guidance_term is not None and diverse
        coef = self.current_guidance_coef if guide else 0.0
        logs: dict[str, list[float]] = {}

        def log(**values: float) -> None:
            for key, value in values.items():
                logs.setdefault(key, []).append(value)

        # sb3-vlm: with SharedEncoderSACPolicy, each batch is encoded once per step (pixel.features_once)
        with features_once(self.policy) as new_step:
            for gradient_step in range(gradient_steps):
                new_step()  # sb3-vlm: a shared encoder's features are computed once per batch
                # Sample replay buffer
                replay_data = cast(  # sb3-vlm: the advised buffers' samples carry the advice columns
                    AdvisedReplayBufferSamples, self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
                )
                if self._augment is not None:  # sb3-vlm: DrQ's random shifts, drawn afresh for each batch
                    replay_data = replay_data._replace(
                        observations=self._augment(replay_data.observations),  # type: ignore[arg-type]  # Dict obs too
                        next_observations=self._augment(replay_data.next_observations),  # type: ignore[arg-type]
                    )
                # For n-step replay, discount factor is gamma**n_steps (when no early termination)
                discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

                # We need to sample because `log_std` may have changed between two gradient steps
                if self.use_sde:
                    self.actor.reset_noise()

                # Action by the current actor for the sampled state
                # sb3-vlm: SAC's actor.action_log_prob() in two steps, keeping π(·|s)'s parameters for the guidance
                # terms
                mean_actions, log_std, dist_kwargs = self.actor.get_action_dist_params(replay_data.observations)
                actions_pi, log_prob = self.actor.action_dist.log_prob_from_params(mean_actions, log_std, **dist_kwargs)
                log_prob = log_prob.reshape(-1, 1)

                # sb3-vlm: what the terms read about this batch (VER and VPG share its Q_f); ERPv's transition model
                batch = self._guidance_batch(
                    replay_data.observations,
                    actions_pi,
                    (mean_actions, log_std, dist_kwargs),
                    replay_data.advice_actions,
                    replay_data.advice_valid,
                )
                log(advice_valid_frac=float(replay_data.advice_valid.mean()))
                if self.ver_term is not None:
                    features, next_features, transition_loss = self._train_transition_model(replay_data)
                    log(transition_loss=transition_loss)

                ent_coef_loss = None
                if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                    # Important: detach the variable from the graph
                    # so we don't change it with other losses
                    # see https://github.com/rail-berkeley/softlearning/issues/60
                    ent_coef = th.exp(self.log_ent_coef.detach())
                    assert isinstance(self.target_entropy, float)
                    ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
                    # sb3-vlm: VER, ERPv eq. 7: L_α + λ2 mean_i Q_f,i (α − ᾱ_i)² (M7 drops L_α)
                    if self.ver_term is not None and batch.has_advice and diverse:
                        alpha = th.exp(self.log_ent_coef)
                        ver_loss, ver_stats = self.ver_term.loss(batch, alpha, features, next_features)
                        log(ver_loss=ver_loss.item(), **ver_stats)
                        ver = self.ver_term.settings
                        ent_coef_loss = (ent_coef_loss if ver.alpha_loss else 0.0) + ver.coef * ver_loss
                    ent_coef_losses.append(ent_coef_loss.item())
                else:
                    ent_coef = self.ent_coef_tensor
                if self.ver is not None and self.num_timesteps >= (self.ver.alpha_zero_after or np.inf):  # sb3-vlm: M6
                    ent_coef = th.zeros_like(ent_coef)

                ent_coefs.append(ent_coef.item())

                # Optimize entropy coefficient, also called
                # entropy temperature or alpha in the paper
                if ent_coef_loss is not None and self.ent_coef_optimizer is not None:
                    self.ent_coef_optimizer.zero_grad()
                    ent_coef_loss.backward()
                    self.ent_coef_optimizer.step()

                with th.no_grad():
                    # Select action according to policy
                    next_actions, next_log_prob = self.actor.action_log_prob(replay_data.next_observations)
                    # Compute the next Q values: min over all critics targets
                    next_q_values = th.cat(self.critic_target(replay_data.next_observations, next_actions), dim=1)
                    next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
                    # add entropy term
                    next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
                    # td error + entropy term
                    target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

                # Get current Q-values estimates for each critic network
                # using action from the replay buffer
                current_q_values = self.critic(replay_data.observations, replay_data.actions)

                # Compute critic loss
                critic_loss = 0.5 * sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
                assert isinstance(critic_loss, th.Tensor)  # for type checker
                critic_losses.append(critic_loss.item())  # type: ignore[union-attr]

                # Optimize the critic
                self.critic.optimizer.zero_grad()
                critic_loss.backward()
                self.critic.optimizer.step()

                # Compute actor loss
                # Alternative: actor_loss = th.mean(log_prob - qf1_pi)
                # Min over all critic networks
                # sb3-vlm: the critic's encoder is read without gradients (it must not learn from the actor's loss,
                # as in DrQ; for SB3's own policies those gradients were discarded unused: this saves their backward)
                with encoder_frozen(self.critic):
                    q_values_pi = th.cat(self.critic(replay_data.observations, actions_pi), dim=1)
                min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
                actor_loss = (ent_coef * log_prob - min_qf_pi).mean()

                # sb3-vlm: the guidance term, on the SAC batch or a batch of advised rows; nothing (not even a random
                # draw) happens without advice, so such a run stays SAC's exactly
                if guide:
                    assert self.guidance_term is not None
                    g_batch = self._advised_guidance_batch(batch_size) if self.advice_batch else batch
                    if g_batch is not None and g_batch.has_advice:
                        g_loss, g_stats = self.guidance_term.loss(g_batch)
                        actor_loss = actor_loss + coef * g_loss
                        log(guidance_loss=g_loss.item(), **g_stats)
                actor_losses.append(actor_loss.item())

                # Optimize the actor
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                self.actor.optimizer.step()

                # Update target networks
                if gradient_step % self.target_update_interval == 0:
                    polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                    # Copy running stats, see GH issue #996
                    polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps
        if guide:  # sb3-vlm: the guidance schedule's clock
            self._n_guided_updates = getattr(self, "_n_guided_updates", 0) + gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if min_diversity > 0:
            self.logger.record("train/advice_diversity", diversity)
        self.logger.record("train/ent_coef", np.mean(ent_coefs))
        self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))
        if len(ent_coef_losses) > 0:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))
        # sb3-vlm
        self.logger.record("train/guidance_coef", coef)
        if isinstance(self.advice_exploration, TeacherEpisodes):
            self.logger.record("train/teacher_episode_share", self.advice_exploration.current_share)
        if buffer.n_pending or buffer.advice_answered_late:
            self.logger.record("train/advice_pending", buffer.n_pending)
            self.logger.record("train/advice_answered_late", buffer.advice_answered_late)
            self.logger.record("train/advice_expired", buffer.advice_expired)
        for key, values in logs.items():
            self.logger.record(f"train/{key}", float(np.mean(values)))

    # ------------------------------------------------------------------ saving

    def _excluded_save_params(self) -> list[str]:
        # the modules are saved as state dicts below; the advisor lives in the env, which is never saved
        # the terms are rebuilt by _setup_model() around the saved gate (which holds the running state)
        return [
            *super()._excluded_save_params(),
            "advice_critic",
            "transition_model",
            "transition_optimizer",
            "guidance_term",
            "ver_term",
            "_augment",
        ]

    #: the zip member holding the guidance modules' state dicts. Not a ``.pth`` file, so plain ``SAC.load`` (which
    #: loads every ``.pth`` member as a parameter of a SAC) ignores it and the saved student loads as a SAC
    GUIDANCE_MEMBER = "sb3_vlm_guidance.pt"

    def _guidance_modules(self) -> dict[str, Any]:
        modules: dict[str, Any] = {"advice_critic": self.advice_critic, "transition_model": self.transition_model}
        modules["transition_optimizer"] = self.transition_optimizer
        return {name: module for name, module in modules.items() if module is not None}

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        ``SAC.save``, plus the guidance modules (C_V, VER's transition model and its optimizer) as one extra zip
        member of state dicts. The file loads with ``GuidedSAC.load`` (everything) and with plain
        ``stable_baselines3.SAC.load`` (the student alone: the teacher is a training-time aid).
        """
        super().save(path, exclude, include)
        buffer = io.BytesIO()
        th.save({name: module.state_dict() for name, module in self._guidance_modules().items()}, buffer)
        if isinstance(path, io.BufferedIOBase):
            path.seek(0)
            target: Any = path
        else:  # where SB3's save_to_zip_file wrote: ".zip" appended to a path without a suffix
            target = pathlib.Path(path)
            target = target if target.suffix else pathlib.Path(f"{target}.zip")
        with zipfile.ZipFile(target, mode="a") as archive:
            archive.writestr(self.GUIDANCE_MEMBER, buffer.getvalue())

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfGuidedSAC],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfGuidedSAC:
        """``SAC.load`` that also restores the guidance modules saved by :meth:`save`."""
        model = super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        if isinstance(path, io.BufferedIOBase):
            path.seek(0)
            source: Any = path
        else:  # what SB3's load opened: the path, else the path with ".zip" appended
            source = pathlib.Path(path)
            source = source if source.is_file() else pathlib.Path(f"{source}.zip")
        with zipfile.ZipFile(source) as archive:
            if model.GUIDANCE_MEMBER not in archive.namelist():
                return model
            # weights_only: tensors and plain containers only, nothing a received file could execute
            states = th.load(
                io.BytesIO(archive.read(model.GUIDANCE_MEMBER)), map_location=model.device, weights_only=True
            )
        modules = model._guidance_modules()
        for name, state in states.items():
            if name not in modules:
                raise ValueError(f"{path}: saved guidance module {name!r} has no counterpart in the loaded model")
            modules[name].load_state_dict(state)
        return model

    def learn(  # type: ignore[override]
        self: SelfGuidedSAC,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 4,
        tb_log_name: str = "GuidedSAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfGuidedSAC:
        # only the default TensorBoard run name differs from SAC's
        return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        out = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        bind_learner(self.env, self)  # the advice wrappers' query selectors may ask the policy (sb3-vlm)
        if reset_num_timesteps and isinstance(self.advice_exploration, TeacherEpisodes) and self.env is not None:
            # the envs were reset: no episode carries over (the returns on record stay the evidence)
            self.advice_exploration.reset(self.env.num_envs)
        return out
