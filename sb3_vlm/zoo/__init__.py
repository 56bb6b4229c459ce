"""
RL Zoo with the guided algorithms: ``python -m sb3_vlm.zoo train|enjoy|... <rl_zoo3 arguments>``.

:func:`register` adds ``guided_sac``, ``guided_ppo`` and ``guided_a2c`` to rl_zoo3's algorithm table and to its
hyperparameter sampler (``-optimize`` also samples the guidance coefficient). :func:`main` is rl_zoo3's command
with three additions:

- ``train`` without ``-conf`` uses the default hyperparameters shipped in ``sb3_vlm/zoo/hyperparams/<algo>.yml``;
- an ``advisor:`` key in an env's yml entry is turned into an ``env_wrapper`` entry
  (:func:`~sb3_vlm.zoo.wrappers.advice_wrapper`), so ``advisor: {advisor: oracle, query_every: 5}`` is enough; the
  user's file is expanded as rl_zoo3 reads it (no temporary copy), so the logs and ``args.yml`` name that file;
- ``train`` and ``enjoy`` run PyTorch on one thread unless ``--num-threads`` says otherwise: the policies are small
  MLPs / CNNs, and on a loaded machine torch's default threads can make each gradient step ~100× slower;
- evaluation envs during training and the envs of ``enjoy`` get no advice (the policy runs without its teacher,
  and no VLM call is paid for evaluation); ``enjoy`` loads guided SAC without allocating its replay buffer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_vlm.zoo.wrappers import advice_wrapper

__all__ = ["DEFAULT_HYPERPARAMS", "GUIDED_ALGOS", "advice_wrapper", "main", "register"]

#: folder of the default hyperparameter files (one per guided algorithm)
DEFAULT_HYPERPARAMS = Path(__file__).parent / "hyperparams"
GUIDED_ALGOS = ("guided_sac", "guided_ppo", "guided_a2c")
_ADVISOR_KEY = "advisor"
_METRICS = "sb3_vlm.callbacks.AdviceMetricsCallback"
_MISSING = "RL Zoo support needs the 'zoo' extra: pip install 'sb3-vlm[zoo]'"


def _import_zoo() -> Any:
    try:
        import rl_zoo3
        import rl_zoo3.hyperparams_opt
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return rl_zoo3


def _with_coef(sampler: Any, name: str, low: float, high: float) -> Any:
    """rl_zoo3's sampler of the base algorithm plus the guidance coefficient (log-uniform)."""

    def sample(trial: Any, n_actions: int, n_envs: int, additional_args: dict[str, Any]) -> dict[str, Any]:
        params = dict(sampler(trial, n_actions, n_envs, additional_args))
        params[name] = trial.suggest_float(name, low, high, log=True)
        return params

    return sample


def register() -> None:
    """Add the guided algorithms to rl_zoo3's algorithm table and hyperparameter sampler (idempotent)."""
    _import_zoo()
    from rl_zoo3 import hyperparams_opt, utils

    from sb3_vlm.a2c import GuidedA2C
    from sb3_vlm.ppo import GuidedPPO
    from sb3_vlm.sac import GuidedSAC

    utils.ALGOS.update(guided_sac=GuidedSAC, guided_ppo=GuidedPPO, guided_a2c=GuidedA2C)
    for algo, base, coef, low, high in (
        ("guided_sac", "sac", "guidance_coef", 0.1, 50.0),  # ERPv/VARL use 10, COVR 1-2
        ("guided_ppo", "ppo", "teacher_coef", 1e-3, 1.0),  # LVLM2P: best at 0.01, worse beyond 1
        ("guided_a2c", "a2c", "teacher_coef", 1e-3, 1.0),
    ):
        hyperparams_opt.HYPERPARAMS_SAMPLER[algo] = _with_coef(
            hyperparams_opt.HYPERPARAMS_SAMPLER[base], coef, low, high
        )
        hyperparams_opt.HYPERPARAMS_CONVERTER[algo] = hyperparams_opt.HYPERPARAMS_CONVERTER[base]


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def expand_advisor_keys(config: dict[str, Any]) -> dict[str, Any]:
    """Turn each env entry's ``advisor:`` mapping into an ``env_wrapper`` entry of :func:`advice_wrapper` (appended
    after the entry's own wrappers) and add :class:`~sb3_vlm.callbacks.AdviceMetricsCallback` to its callbacks."""
    out: dict[str, Any] = {}
    for env_id, entry in config.items():
        if isinstance(entry, dict) and _ADVISOR_KEY in entry:
            entry = dict(entry)
            advisor = entry.pop(_ADVISOR_KEY)
            kwargs = {"advisor": advisor} if isinstance(advisor, str) else dict(advisor)
            wrappers = entry.get("env_wrapper") or []
            wrappers = list(wrappers) if isinstance(wrappers, list) else [wrappers]
            entry["env_wrapper"] = [*wrappers, {"sb3_vlm.zoo.advice_wrapper": kwargs}]
            # the advisor's counters in the logs (TensorBoard ...) unless the yml already asks for the callback
            callbacks = entry.get("callback") or []
            callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
            if not any(_METRICS in str(c) for c in callbacks):
                entry["callback"] = [*callbacks, _METRICS]
        out[env_id] = entry
    return out


def _prepare_config(argv: list[str], algo: str | None) -> list[str]:
    """``train``: the default hyperparameter file of a guided algorithm when ``-conf`` is not given."""
    if _option(argv, "-conf", "--conf-file") is None and algo in GUIDED_ALGOS:
        return [*argv, "-conf", str(DEFAULT_HYPERPARAMS / f"{algo}.yml")]
    return argv


class _AdvisorKeysYaml:
    """``yaml`` as rl_zoo3's experiment manager sees it: ``safe_load`` expands ``advisor:`` keys
    (:func:`expand_advisor_keys`); everything else is PyYAML's."""

    def __getattr__(self, name: str) -> Any:
        import yaml

        return getattr(yaml, name)

    @staticmethod
    def safe_load(stream: Any) -> Any:
        import yaml

        data = yaml.safe_load(stream)
        return expand_advisor_keys(data) if isinstance(data, dict) else data


def _expand_advisor_keys_on_read() -> None:
    from rl_zoo3 import exp_manager

    if not isinstance(exp_manager.yaml, _AdvisorKeysYaml):
        exp_manager.yaml = _AdvisorKeysYaml()  # type: ignore[assignment]


def _one_thread_by_default(argv: list[str]) -> list[str]:
    return argv if _option(argv, "--num-threads") is not None else [*argv, "--num-threads", "1"]


def _no_advice_in_eval_envs() -> None:
    from rl_zoo3.exp_manager import ExperimentManager

    from sb3_vlm.zoo import wrappers

    create_envs = ExperimentManager.create_envs
    if getattr(create_envs, "_sb3_vlm", False):
        return

    def patched(self: Any, n_envs: int, eval_env: bool = False, no_log: bool = False) -> Any:
        previous, wrappers.ADVICE_OFF = wrappers.ADVICE_OFF, eval_env or wrappers.ADVICE_OFF
        try:
            return create_envs(self, n_envs, eval_env=eval_env, no_log=no_log)
        finally:
            wrappers.ADVICE_OFF = previous

    patched._sb3_vlm = True  # type: ignore[attr-defined]
    ExperimentManager.create_envs = patched  # type: ignore[method-assign]


def _light_loader(cls: type[BaseAlgorithm]) -> type[BaseAlgorithm]:
    """``enjoy`` loads SAC with ``buffer_size=1`` (no replay memory needed to act); rl_zoo3 does so only for the
    algorithms it knows, so the guided SAC gets a loader that does the same."""

    class Loader(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def load(cls_, path: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("buffer_size", 1)
            return cls.load(path, *args, **kwargs)

    Loader.__name__ = cls.__name__
    return Loader


def main(argv: list[str] | None = None) -> int:
    """``python -m sb3_vlm.zoo <script> [rl_zoo3 arguments]`` (scripts: train, enjoy, plot_train, ...)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nUsage: python -m sb3_vlm.zoo {train,enjoy,plot_train,plot_from_file,all_plots} [rl_zoo3 arguments]")
        print("       python -m sb3_vlm.zoo train --algo guided_ppo --env MiniGrid-LavaGapS7-v0 -n 20000")
        return 0
    register()
    from rl_zoo3 import utils

    import sb3_vlm.envs  # noqa: F401  (registers the sb3_vlm/<name>-v0 ids)
    from sb3_vlm.zoo import wrappers

    script, rest = argv[0], argv[1:]
    algo = _option(rest, "--algo")
    if script == "train":
        rest = _one_thread_by_default(_prepare_config(rest, algo))
        _expand_advisor_keys_on_read()
        _no_advice_in_eval_envs()
    elif script == "enjoy":
        rest = _one_thread_by_default(rest)
        wrappers.ADVICE_OFF = True
        if algo == "guided_sac":
            from sb3_vlm.sac import GuidedSAC

            utils.ALGOS["guided_sac"] = _light_loader(GuidedSAC)
    sys.argv = [f"sb3_vlm.zoo {script}", *rest]
    if script == "train":
        from rl_zoo3.train import train

        train()
    elif script == "enjoy":
        from rl_zoo3.enjoy import enjoy

        enjoy()
    else:  # the plotting scripts need rl_zoo3's plot dependencies (seaborn ...)
        from rl_zoo3 import cli

        sys.argv = [sys.argv[0], script, *rest]
        cli.main()
    return 0
