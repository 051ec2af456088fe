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


@pytest.fixture(scope="session")
def meu_instruct(tmp_path_factory):
    """A small MEU-Instruct dataset made by the real builder (`mellm build-data` on 36 synthetic
    clips of 6 subjects): every question type, images, splits.json. Read-only for the tests."""
    from mellm.analyze import PerceptionSettings
    from mellm.data_builders.build import BuildConfig, build

    root = tmp_path_factory.mktemp("meu_source")
    generate_corpus(root, n=36, seed=11, config=SynthConfig(n_frames=14, width=320, height=240, face_iod=60,
                                                            n_subjects=6))
    out = tmp_path_factory.mktemp("meu")
    build(BuildConfig(datasets=[("synth", root)], out=out, workers=1, perception=PerceptionSettings(flow="dis"),
                      exports=False, progress=False))
    return out
