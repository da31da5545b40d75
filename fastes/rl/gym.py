"""Populations on any gymnasium environment, across worker processes.

Each generation, every member plays the same ``episodes`` episodes: the env seeds come from the
generation's key (common random numbers, Salimans et al. 2017 §2.1), so members differ only by
their parameters. Members are spread over ``workers`` processes (each keeps one env); a member's
result does not depend on which worker ran it, so runs are reproducible for any worker count.
Workers run the policy in numpy (a small MLP costs microseconds per step there). Observations
are normalised with running statistics frozen during a generation (:mod:`.normalization`).

    task = GymTask("LunarLander-v3", hidden=(32, 32), episodes=2, workers=2)
    trainer = fastes.Trainer(strategy, task, ...)

Needs ``pip install "gymnasium[box2d]"`` for Box2D envs, ``"gymnasium[mujoco]"`` for MuJoCo.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from .. import normalization as nz
from .._validate import real
from ..noise import philox_uint32_rows
from ..tree import tree_leaves, tree_map
from .policies import MLPPolicy
from .recurrent import make_policy
from .tasks import RLTaskMixin

__all__ = ["GymTask", "import_gymnasium", "run_episodes"]

_ENV = {}  # per process: (env_id, kwargs) -> env


def import_gymnasium():
    try:
        import gymnasium
    except ImportError:
        raise ImportError(
            'the gymnasium adapter needs gymnasium: pip install "fastes[rl]" '
            '(Box2D envs: pip install "gymnasium[box2d]")'
        ) from None
    return gymnasium


def _make(env_id: str, env_kwargs: dict):
    """``(env, kept)``: this process's env for (id, kwargs), kept for the next job, or a fresh
    one the caller closes. Box2D envs keep one ``b2World`` across ``reset``, so an episode
    depended on the episodes the process had run before it (measured on BipedalWalker-v3: the
    same member's return moved in the 4th digit after three other members), i.e. on how jobs
    fell to workers; they are made fresh for every job (~1.6 ms for BipedalWalker)."""
    k = (env_id, tuple(sorted(env_kwargs.items())))
    if k in _ENV:
        return _ENV[k], True
    env = import_gymnasium().make(env_id, **env_kwargs)
    if type(getattr(env.unwrapped, "world", None)).__name__ == "b2World":
        return env, False
    _ENV[k] = env
    return env, True


def run_episodes(
    env_id, env_kwargs, policy: MLPPolicy, params, norm, seeds, observe=False, frames=None,
    reward_clip=None,
):  # fmt: skip
    """Play one member's episodes (one per seed) in this process; returns
    ``(returns (E,), lengths (E,), (count, mean, m2) of the observations or None)``.
    ``frames``: a list that receives the rendered RGB frames (one after each reset and step).
    ``reward_clip``: each step's reward is clipped to ±reward_clip before it is summed."""
    if frames is not None:
        env_kwargs = {**env_kwargs, "render_mode": "rgb_array"}
    env, kept = _make(env_id, env_kwargs)
    returns, lengths, seen = [], [], []
    recurrent = getattr(policy, "recurrent", False)
    for seed in seeds:
        obs, _ = env.reset(seed=int(seed))
        if frames is not None:
            frames.append(env.render())
        total, n, done, h = 0.0, 0, False, None  # a recurrent state starts afresh per episode
        while not done:
            if observe:
                seen.append(obs)
            x = np.asarray(obs, dtype=np.float64)
            if recurrent:
                a, h = policy.act(params, x, norm, h)
            else:
                a = policy.act(params, x, norm)
            a = int(a) if policy.discrete else a.astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(a)
            if frames is not None:
                frames.append(env.render())
            r = float(reward)
            total += r if reward_clip is None else min(max(r, -reward_clip), reward_clip)
            n += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(n)
    if not kept:
        env.close()
    stats = None
    if observe:
        x = np.asarray(seen, dtype=np.float64)
        mean = x.mean(0)
        stats = (float(len(x)), mean, ((x - mean) ** 2).sum(0))
    return np.asarray(returns), np.asarray(lengths), stats


def _run(args):
    return run_episodes(*args)


def _watch_parent(parent_pid: int) -> None:
    """Worker initializer: exit when the parent dies (a SIGKILLed training run must not leave
    its workers running; they would otherwise wait on their queue forever)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


class GymTask(RLTaskMixin):
    """A population of :class:`MLPPolicy` policies on gymnasium env ``env_id``.

    Args:
        env_id: any registered id (``"LunarLander-v3"``, ``"HalfCheetah-v5"``, ...).
        policy: a policy object, or the kind of the default one sized from the env's spaces:
            ``"mlp"`` (``hidden`` tanh layers, the default; continuous actions tanh-squashed into
            the Box bounds), ``"gru"`` or ``"lstm"`` (state size ``hidden[0]``).
        episodes: episodes per member per generation (a "virtual batch" of env seeds).
        workers: processes (default: all CPUs); 0 runs everything in this process.
        normalize_obs: running observation normalisation.
        eval_episodes: episodes of the unperturbed evaluation (seeds from the eval key).
        env_kwargs: passed to ``gymnasium.make`` (e.g. ``max_episode_steps``).
        reward_clip: training only: the fitness sums each step's reward clipped to
            ±reward_clip (ARS set-ups for BipedalWalker clip to ±1 so that its −100 for a fall
            does not drown the reward for walking); evaluations report the true returns.

    Worker processes are started with ``spawn`` (safe with threads and CUDA), which re-imports
    the main module in every worker: a script that uses ``workers > 0`` must keep its top-level
    code under ``if __name__ == "__main__":``, or each worker would run the script again.
    Call :meth:`close` (or let the Trainer's CLI do it) to stop the workers.
    """

    mode = "batched"

    def __init__(
        self,
        env_id: str,
        policy: MLPPolicy | str | None = None,
        *,
        hidden: tuple[int, ...] = (32, 32),
        episodes: int = 1,
        workers: int | None = None,
        normalize_obs: bool = True,
        eval_episodes: int = 10,
        env_kwargs: dict | None = None,
        start_method: str = "spawn",
        reward_clip: float | None = None,
    ):
        self._pool: ProcessPoolExecutor | None = None  # first: __del__ runs even if init fails
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
            raise TypeError(f"workers must be an int >= 0 or None; got {workers!r}")
        if workers is not None and workers < 0:
            raise ValueError(f"workers must be an int >= 0 or None (all CPUs); got {workers}")
        gym = import_gymnasium()
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.reward_clip = (
            None if reward_clip is None else real(reward_clip, "reward_clip", positive=True)
        )
        env = gym.make(env_id, **self.env_kwargs)
        if policy is None or isinstance(policy, str):
            policy = _policy_for(env, tuple(hidden), gym, policy or "mlp")
        env.close()
        self._setup(policy, episodes, eval_episodes, normalize_obs)
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.start_method = start_method

    # -- execution ----------------------------------------------------------------------------
    def _map(self, jobs: list) -> list:
        if self.workers == 0:
            return [_run(j) for j in jobs]
        if self._pool is None:
            ctx = multiprocessing.get_context(self.start_method)
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_watch_parent, initargs=(os.getpid(),)
            )
        chunk = max(1, math.ceil(len(jobs) / (4 * self.workers)))
        return list(self._pool.map(_run, jobs, chunksize=chunk))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __del__(self):
        self.close()

    def _norm(self):
        if not self.normalize_obs:
            return None
        return tuple(t.numpy() for t in nz.mean_std(self.norm))

    @staticmethod
    def seeds(key: torch.Tensor, n: int) -> list[int]:
        """``n`` env seeds (uint32) from ``key``: the same for every member of a generation."""
        return philox_uint32_rows(key, [0], n)[0].tolist()

    # -- the task protocol --------------------------------------------------------------------
    def fitness(self, params, key) -> torch.Tensor:
        """Mean return (M,) of M stacked members over the generation's episodes."""
        members = tree_leaves(params)[0].shape[0]
        flat = tree_map(lambda v: v.detach().cpu().double().numpy(), params)
        seeds, norm = self.seeds(key, self.episodes), self._norm()
        jobs = [
            (self.env_id, self.env_kwargs, self.policy, tree_map(lambda v, m=m: v[m], flat),
             norm, seeds, self.normalize_obs, None, self.reward_clip)
            for m in range(members)
        ]  # fmt: skip
        results = self._map(jobs)
        lengths = torch.as_tensor(np.stack([n for _, n, _ in results]))  # (M, episodes)
        moments = None
        if self.normalize_obs:  # per member, in member order
            per_member = [s for _, _, s in results]  # (count, mean, M2) of each member
            moments = nz.RunningNorm(*(
                torch.as_tensor(np.stack([np.asarray(s[j], dtype=np.float64) for s in per_member]))
                for j in range(3)
            ))  # fmt: skip
        self._observed(lengths, moments)
        return torch.tensor([r.mean() for r, _, _ in results], dtype=torch.float32)

    def evaluate(self, params, key) -> dict:
        """The unperturbed policy on ``eval_episodes`` episodes (spread over the workers)."""
        p = self.policy.numpy_params(params)
        norm = self._norm()
        jobs = [
            (self.env_id, self.env_kwargs, self.policy, p, norm, [s], False)
            for s in self.seeds(key, self.eval_episodes)
        ]
        results = self._map(jobs)
        return self._eval_summary(
            np.concatenate([x[0] for x in results]), np.concatenate([x[1] for x in results])
        )


def _policy_for(env, hidden: tuple[int, ...], gym, kind: str = "mlp"):
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"GymTask needs a flat Box observation space; got {obs_space}")
    obs_dim = int(obs_space.shape[0])
    if isinstance(act_space, gym.spaces.Discrete):
        return make_policy(kind, obs_dim, int(act_space.n), hidden)
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        low, high = np.unique(act_space.low), np.unique(act_space.high)
        if len(low) != 1 or len(high) != 1 or not np.all(np.isfinite([low, high])):
            raise ValueError(
                f"the default policy needs finite, uniform action bounds; got {act_space} "
                "(pass your own MLPPolicy)"
            )
        return make_policy(kind, obs_dim, int(act_space.shape[0]), hidden, discrete=False,
                           low=float(low[0]), high=float(high[0]))  # fmt: skip
    raise ValueError(f"GymTask supports Discrete and 1-d Box action spaces; got {act_space}")
