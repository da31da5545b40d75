"""RL tasks for the :class:`fastes.Trainer` (the protocol: :class:`fastes.tasks.Task`).

:class:`EnvTask` runs policies on fastes' torch-native envs; :class:`fastes.rl.gym.GymTask` on
gymnasium. Both keep running observation statistics, log episode lengths and env steps, and
checkpoint their state.
"""

from __future__ import annotations

import torch

from .. import distributed, envs
from .. import normalization as nz
from .._validate import POPULATION, positive_int
from ..tasks import FunctionTask
from ..tree import tree_leaves, tree_map
from .module_policy import ModulePolicy
from .policies import MLPPolicy
from .recurrent import make_policy

__all__ = ["EnvTask", "FunctionTask", "RLTaskMixin"]


class RLTaskMixin:
    """Shared by the RL tasks: running observation normalisation, episode statistics."""

    def _setup(self, policy: MLPPolicy, episodes: int, eval_episodes: int, normalize_obs: bool):
        positive_int(episodes, "episodes")
        positive_int(eval_episodes, "eval_episodes")
        self.policy, self.episodes, self.eval_episodes = policy, episodes, eval_episodes
        self.normalize_obs = normalize_obs
        self.norm = nz.running_norm(policy.obs_dim)
        self.env_steps = 0
        self._rows: list[torch.Tensor] = []  # per member: [episode lengths, count, mean, M2]

    def init_params(self, key: torch.Tensor) -> dict:
        return self.policy.init(key, device=getattr(self, "device", None))

    def _observed(self, lengths: torch.Tensor, stats: nz.RunningNorm | None) -> None:
        """Record M members' episode lengths (M, E) and observation moments (per member:
        count (M,), mean and M2 (M, obs_dim)), in member order."""
        lengths = lengths.reshape(lengths.shape[0], -1).double().cpu()
        if stats is None:
            z = torch.zeros(lengths.shape[0], self.policy.obs_dim, dtype=torch.float64)
            stats = nz.RunningNorm(z[:, 0], z, z)
        parts = [lengths, stats.count.cpu()[:, None], stats.mean.cpu(), stats.m2.cpu()]
        self._rows.append(torch.cat(parts, dim=1))

    def end_generation(self) -> dict:
        """Fold this generation's observations into the normaliser; return its statistics.

        Under torch.distributed each rank saw its own members: the per-member records are
        gathered in member order and pooled by fixed-shape reductions, so every rank, on any
        number of processes, gets the same normaliser."""
        d = self.policy.obs_dim
        if not self._rows:
            return {"episode_length": float("nan"), "env_steps": self.env_steps}
        rows = distributed.gather_varying(torch.cat(self._rows))  # (P, E + 1 + 2d)
        self._rows = []
        lengths = rows[:, : -(1 + 2 * d)]
        stats = nz.RunningNorm(rows[:, -(1 + 2 * d)], rows[:, -2 * d : -d], rows[:, -d:])
        if self.normalize_obs:
            self.norm = nz.merge(self.norm, nz.combine(stats))
        self.env_steps += int(lengths.sum())
        return {"episode_length": float(lengths.mean()), "env_steps": self.env_steps}

    def record(self, params, seeds) -> tuple[list, torch.Tensor, torch.Tensor]:
        """Film one episode per env seed with the unperturbed ``params`` (gymnasium's
        ``rgb_array`` rendering of this task's env): ``(frames, returns, lengths)``."""
        from .video import record

        norm = None
        if self.normalize_obs:
            norm = tuple(t.numpy() for t in nz.mean_std(self.norm))
        env_id = getattr(self, "env_id", None) or self.env.GYM_ID
        env_kwargs = getattr(self, "env_kwargs", {})
        return record(env_id, self.policy, params, norm, seeds, env_kwargs)

    @staticmethod
    def _eval_summary(returns: torch.Tensor, lengths: torch.Tensor) -> dict:
        """What ``evaluate`` reports: mean return (the score), its population std, mean length."""
        r = torch.as_tensor(returns, dtype=torch.float64)
        n = torch.as_tensor(lengths, dtype=torch.float64)
        return {"score": float(r.mean()), "score_std": float(r.std(unbiased=False)),
                "eval_length": float(n.mean())}  # fmt: skip

    def state_dict(self) -> dict:
        return {"norm": list(self.norm), "env_steps": self.env_steps}

    def load_state_dict(self, state: dict) -> None:
        self.norm = nz.RunningNorm(*state["norm"])
        self.env_steps = int(state["env_steps"])


class EnvTask(RLTaskMixin):
    """A population of policies on a torch-native env (:mod:`fastes.envs`): every member plays
    ``episodes`` episodes from the same start states (drawn from the generation's key); all
    members × episodes step as one batched tensor program. Fitness = mean return.

    Args:
        env: a name in :data:`fastes.envs.ENVS` or an env module.
        policy: a policy object (:class:`MLPPolicy`, :class:`GRUPolicy`, :class:`LSTMPolicy`),
            or the kind of the default one sized to the env: ``"mlp"`` (``hidden`` tanh layers,
            the default), ``"gru"`` or ``"lstm"`` (state size ``hidden[0]``).
        episodes: episodes per member per generation.
        normalize_obs: running observation normalisation (statistics frozen within a generation).
        eval_episodes: episodes of the unperturbed evaluation.
        mode: ``"batched"`` (stacked members' params: every strategy) or ``"population"`` (a
            :class:`fastes.population.Population`, for ``eggroll`` with a
            :class:`fastes.rl.ModulePolicy`).
    """

    def __init__(
        self,
        env="cartpole",
        policy: MLPPolicy | str | None = None,
        *,
        hidden: tuple[int, ...] = (16,),
        episodes: int = 4,
        normalize_obs: bool = False,
        eval_episodes: int = 10,
        device=None,
        mode: str = "batched",
    ):
        self.env = envs.get(env) if isinstance(env, str) else env
        if policy is None or isinstance(policy, str):
            policy = default_policy(self.env, hidden, policy or "mlp")
        if mode not in ("batched", POPULATION):
            raise ValueError(f"mode must be 'batched' or {POPULATION!r}; got {mode!r}")
        if mode == POPULATION and not isinstance(policy, ModulePolicy):
            raise ValueError(
                "mode='population' runs an nn.Module for a low-rank population: pass "
                f"policy=fastes.rl.ModulePolicy(module, ...); got {type(policy).__name__}"
            )
        self.mode = mode
        self._setup(policy, episodes, eval_episodes, normalize_obs)
        self.device = device

    def _rollout(self, params, key, members: int, episodes: int):
        norm = None
        if self.normalize_obs:
            norm = tuple(t.float().to(self.device) for t in nz.mean_std(self.norm))
        act = lambda obs: self.policy.act(params, obs.float(), norm)
        if getattr(self.policy, "recurrent", False):
            # A batch of torch-native episodes starts together: one state, reset here.
            memory = {"h": None}

            def act(obs):
                a, memory["h"] = self.policy.act(params, obs.float(), norm, memory["h"])
                return a

        return envs.rollout(
            act, key, (episodes,), self.env, self.device, self.normalize_obs, members=members
        )

    def fitness(self, params, key) -> torch.Tensor:
        """Mean return (M,) of M stacked members' policies over the generation's episodes."""
        members = len(params) if self.mode == POPULATION else tree_leaves(params)[0].shape[0]
        out = self._rollout(params, key, members, self.episodes)
        self._observed(out.lengths, out.obs_stats)
        return out.returns.mean(-1).float()

    def evaluate(self, params, key) -> dict:
        """The unperturbed policy on ``eval_episodes`` episodes: score = mean return."""
        one = tree_map(lambda v: v[None], params)
        out = self._rollout(one, key, 1, self.eval_episodes)
        return self._eval_summary(out.returns[0], out.lengths)


def default_policy(env, hidden: tuple[int, ...], kind: str = "mlp"):
    """A policy of ``kind`` ("mlp", "gru", "lstm") sized for a torch-native env module."""
    if env.DISCRETE:
        return make_policy(kind, env.OBS_DIM, env.ACTIONS, tuple(hidden))
    return make_policy(
        kind, env.OBS_DIM, env.ACTION_DIM, tuple(hidden), discrete=False,
        low=env.ACTION_LOW, high=env.ACTION_HIGH,
    )  # fmt: skip
