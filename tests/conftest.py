"""Shared fixtures: synthetic ME corpora, generated once per test session (seeded)."""

from __future__ import annotations

import pytest

from mellm.synth import SynthConfig, generate_corpus


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """30 CASME II-like clips (640x480, 24 frames, lossless PNG), half with head drift."""
    root = tmp_path_factory.mktemp("synth30")
    clips = generate_corpus(root, n=30, seed=3, config=SynthConfig(n_frames=24, drift_fraction=0.5))
    return root, clips


@pytest.fixture(scope="session")
def synth_videos(tmp_path_factory):
    """Three clips written both as PNG frames and as lossless FFV1 video."""
    root = tmp_path_factory.mktemp("synth_video")
    clips = generate_corpus(root, n=3, seed=5, config=SynthConfig(n_frames=16, width=320, height=240, face_iod=60, fmt="both"))
    return root, clips
