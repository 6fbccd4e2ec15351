"""Videos of evaluation episodes: the environment's `rgb_array` frames, written as mp4 by imageio
with its ffmpeg plugin (imageio-ffmpeg ships its own ffmpeg binary: `pip install -e ".[video]"`).

Rendering needs, by environment: MuJoCo's (Hopper, AntMaze, ...) an offscreen OpenGL context,
chosen by the MUJOCO_GL variable: `egl` (a GPU driver's EGL, or Mesa's: `apt-get install libegl1`)
or `osmesa` (software: `apt-get install libosmesa6`); without a display and without MUJOCO_GL,
`egl` is tried (gymnasium would try GLFW first, which needs a display). Classic control's
(Pendulum) pygame, no OpenGL (in the `video` extra).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """Videos cannot be made here; the message names what to install or set."""


def choose_gl_backend() -> str | None:
    """MUJOCO_GL as set, else `egl` where there is no display (set for this process, with pygame's
    dummy video driver); None: a display is there and gymnasium picks."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame: no window system to probe
    return os.environ.get("MUJOCO_GL")


def check_renderer(env_factory: Callable, name: str) -> None:
    """Refuse now (VideoError, one line with the fix) when mp4 files cannot be written or the
    environment made by `env_factory` (with render_mode="rgb_array") cannot render a frame."""
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's mp4 writer)
    except ImportError:
        raise VideoError('video=true writes mp4 through imageio-ffmpeg, which is not installed: '
                         'pip install -e ".[video]" (or drop video=true)') from None
    backend = choose_gl_backend()
    try:
        env = env_factory()
        try:
            env.reset(seed=0)
            frame = env.render()
        finally:
            env.close()
    except Exception as error:  # gymnasium's, pygame's, mujoco's and PyOpenGL's errors alike
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise VideoError(
            f"video=true: {name} cannot render a frame here ({type(error).__name__}: {reason}). MuJoCo "
            f"environments render offscreen through MUJOCO_GL (now {backend!r}): egl (apt-get install "
            "libegl1, or a GPU driver) or osmesa (apt-get install libosmesa6); classic control ones "
            'need pygame (pip install -e ".[video]"). Or drop video=true') from None
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        raise VideoError(f"video=true: {name} gives no rgb_array frames (got {type(frame).__name__}); "
                         "drop video=true")


def record(policy: Callable[[np.ndarray], np.ndarray], env_factory: Callable, env_seeds: np.ndarray,
           path_of: Callable[[int, int, float], Path], fps: int | None = None) -> np.ndarray:
    """Play one episode per entry of `env_seeds` (seeds, episodes), all stepped together with one
    batched `policy` call per step as `envs.evaluate` does (so the returns are the evaluation's for
    the same seeds), and write each episode's frames to `path_of(seed index, episode, return)`.
    Returns the episodes' returns (seeds, episodes)."""
    import imageio.v2 as imageio

    num_seeds, episodes = np.shape(env_seeds)
    environments = [env_factory() for _ in range(num_seeds * episodes)]
    seeds = np.asarray(env_seeds).reshape(-1)
    try:
        observations = np.stack([env.reset(seed=int(seed))[0] for env, seed in zip(environments, seeds,
                                                                                   strict=True)])
        frames = [[env.render()] for env in environments]
        returns = np.zeros(len(environments))
        running = np.ones(len(environments), dtype=bool)
        while running.any():
            actions = np.asarray(policy(observations.reshape(num_seeds, episodes, -1))).reshape(
                len(environments), -1)
            for i in np.flatnonzero(running):
                observation, reward, terminated, truncated, _ = environments[i].step(actions[i])
                observations[i] = observation
                returns[i] += reward
                frames[i].append(environments[i].render())
                running[i] = not (terminated or truncated)
        rate = fps or environments[0].metadata.get("render_fps") or 30
        for i, episode_frames in enumerate(frames):
            path = Path(path_of(i // episodes, i % episodes, float(returns[i])))
            path.parent.mkdir(parents=True, exist_ok=True)
            # macro_block_size=1: frames of any size (MuJoCo's 480x480, pygame's 500x500), not padded
            imageio.mimwrite(path, episode_frames, fps=rate, macro_block_size=1)
    finally:
        for env in environments:
            env.close()
    return returns.reshape(num_seeds, episodes)
