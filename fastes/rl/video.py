"""Watching the agent: episodes of a policy rendered by gymnasium (``rgb_array``) and written as
a GIF or MP4 with imageio, the field's usual writer (an optional extra:
``pip install "fastes[video]"``; MP4 also needs ``imageio-ffmpeg``).

    frames, returns, lengths = record(env_id, policy, params, norm, seeds)
    write_video("best.gif", frames, fps=30)

The torch-native envs match gymnasium's dynamics, so their policies are filmed in gymnasium's
own env of the same id (``fastes.envs.cartpole.GYM_ID``, ...).
"""

from __future__ import annotations

import io
import os

import numpy as np

from .._io import atomic_write
from .gym import run_episodes
from .policies import MLPPolicy

__all__ = ["encode_gif", "record", "write_video"]


def record(env_id: str, policy: MLPPolicy, params, norm, seeds, env_kwargs: dict | None = None):
    """Play one episode per seed with ``params`` and render it: ``(frames, returns, lengths)``,
    frames a list of (H, W, 3) uint8 arrays — one after each reset and one per step."""
    frames: list[np.ndarray] = []
    p = policy.numpy_params(params)
    env_kwargs = dict(env_kwargs or {})
    if _is_mujoco(env_id) and not {"camera_id", "camera_name"} & env_kwargs.keys():
        # The model's tracking camera, as gymnasium documents for its MuJoCo envs ("so agent does
        # not run away from screen"); without a camera argument gymnasium 1.x renders a free
        # camera that a fast runner leaves (HalfCheetah was off screen for most of an episode).
        # Models without a "track" camera keep the free one.
        env_kwargs["camera_name"] = "track"
    try:
        returns, lengths, _ = run_episodes(
            env_id, env_kwargs, policy, p, norm, seeds, frames=frames
        )
    except Exception as e:  # noqa: BLE001 - only an OpenGL failure is rewritten, the rest re-raised
        if "OpenGL" not in str(e):
            raise
        # MuJoCo renders through OpenGL (GLFW by default, which needs a display): the raw error
        # (mujoco.FatalError) does not say what to do on a headless machine.
        raise RuntimeError(
            f"rendering {env_id!r} needs an OpenGL context, and none could be made ({e}). On a "
            "machine without a display, set MUJOCO_GL=egl (or osmesa) in the environment before "
            "starting, e.g. MUJOCO_GL=egl fastes eval RUN --video out.gif"
        ) from e
    return frames, returns, lengths


def _is_mujoco(env_id: str) -> bool:
    """Whether gymnasium registers ``env_id`` as one of its MuJoCo envs."""
    import gymnasium

    spec = gymnasium.envs.registry.get(env_id)
    entry = getattr(spec, "entry_point", None)
    return isinstance(entry, str) and entry.startswith("gymnasium.envs.mujoco")


def _imageio():
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise ImportError('videos need imageio: pip install "fastes[video]"') from None
    return imageio


def encode_gif(frames: list, fps: int = 30) -> bytes:
    """``frames`` as an animated GIF (looping), in memory."""
    if not frames:
        raise ValueError("frames is empty: nothing to write")
    buf = io.BytesIO()
    _imageio().mimsave(buf, frames, format="GIF", duration=1000 / fps, loop=0)
    return buf.getvalue()


def write_video(path: str | os.PathLike, frames: list, fps: int = 30) -> None:
    """Write ``frames`` to ``path`` (``.gif`` or ``.mp4``), atomically."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".gif", ".mp4"):
        raise ValueError(f"path must end in .gif or .mp4; got {path!r}")
    if not frames:
        raise ValueError("frames is empty: nothing to write")
    if ext == ".gif":
        gif = encode_gif(frames, fps)
        write = lambda fh: fh.write(gif)  # noqa: E731
    else:
        imageio = _imageio()
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ImportError(
                "MP4 videos need imageio-ffmpeg: pip install imageio-ffmpeg"
            ) from None
        write = lambda fh: imageio.mimsave(fh, frames, format="FFMPEG", fps=fps)
    atomic_write(path, write)
