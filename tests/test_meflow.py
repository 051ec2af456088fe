"""MEFlowNet-lite (mellm.meflow): the tiny config learns, checkpoints reload exactly and resume, the
`meflownet` backend plugs into perception, and bad input fails clearly before any long work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mellm.errors import MellmError
from mellm.meflow.data import FlowDataConfig, write_flow_data
from mellm.meflow.model import MEFlowConfig, MEFlowNet, build_model, load_model, save_model
from mellm.meflow.train import load_config, train

# Eight training pairs, every batch all of them (no flip): the loss is measured on the same pairs
# each step, so "it learns" is a clean, cheap check; held-out pairs are other identities.
TINY_DATA = dict(size=64, n_train=8, n_heldout=8, shard_size=8, train_identities=2, heldout_identities=1,
                 amplitude=(0.5, 2.0), head_fraction=0.5)


def _tiny_train(data, out, steps: int, *extra: str):
    cfg = load_config("refine_cpu", [f"data={data}", f"output_dir={out}", f"train.steps={steps}", "train.crop=0",
                                     "train.batch_size=8", "train.flip=false", f"train.eval_every={steps}",
                                     "train.eval_pairs=8", "train.save_every=30", "train.log_every=5",
                                     "train.warmup_steps=5", "train.threads=1", *extra])
    return train(cfg, progress=False)


@pytest.fixture(scope="module")
def flow_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowdata")
    write_flow_data(root, FlowDataConfig(**TINY_DATA), seed=0)
    return root


@pytest.mark.slow  # ~40 s on a quiet 2-core machine
def test_cpu_config_learns_beats_zero_flow_and_resumes(flow_data, tmp_path):
    run = _tiny_train(flow_data, tmp_path / "run", 30)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2])  # the same 8 pairs every step: it fits them
    final = json.loads((run / "metrics.json").read_text())
    assert final["eval_expression_epe"] < 0.8 * final["eval_zero_epe"]  # held-out identities, moving face pixels
    assert "eval_init_epe" in final  # a refinement model reports its initialisation alone beside it
    assert (run / "model" / "meflownet.pt").is_file() and any((run / "tensorboard").iterdir())

    # A longer run in the same folder resumes from the last checkpoint instead of starting over.
    _tiny_train(flow_data, tmp_path / "run", 31)
    starts = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"start"' in line]
    assert starts[-1]["resumed_from"].endswith("checkpoint-30") and starts[-1]["step"] == 30
    with pytest.raises(MellmError, match="another model config"):
        _tiny_train(flow_data, tmp_path / "run", 32, "model.hidden_dim=16")


@pytest.mark.parametrize("cfg", [MEFlowConfig(feature_dim=16, hidden_dim=16, context_dim=8),
                                 MEFlowConfig(feature_dim=16, hidden_dim=16, context_dim=8, downsample=4, uncertainty=True),
                                 MEFlowConfig(arch="meflow_refine", feature_dim=16, hidden_dim=16, context_dim=8, downsample=4,
                                              iterations=2),
                                 MEFlowConfig(arch="raft_small", iterations=2)], ids=["meflownet", "quarter_unc", "refine", "raft_small"])
def test_a_saved_checkpoint_reloads_to_identical_outputs(cfg, tmp_path):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.arch == "meflow_refine":  # its output layer starts at zero: give the learned part something to carry
        torch.nn.init.normal_(model.out.weight, std=0.05)
    size = 128 if cfg.arch == "raft_small" else 64
    a, b = torch.rand(2, 1, 1, size, size).mul(255).unbind(0)
    with torch.no_grad():
        before = model(a, b)[-1]
    save_model(model, tmp_path / "m")
    with torch.no_grad():
        after = load_model(tmp_path / "m")(a, b)[-1]
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    if cfg.arch != "raft_small":  # expression = facial - head, and the head flow is an affine field
        assert torch.allclose(before["expression"], before["facial"] - before["head"])
        h = before["head"][0]
        assert torch.allclose(h[:, 2:, 1:-1] - 2 * h[:, 1:-1, 1:-1] + h[:, :-2, 1:-1], torch.zeros(1), atol=1e-4)


def test_an_untrained_refine_model_is_its_dis_initialisation():
    from mellm.flow import DIS

    torch.manual_seed(0)
    model = build_model(MEFlowConfig(arch="meflow_refine", feature_dim=16, hidden_dim=16, context_dim=8, downsample=4,
                                     iterations=2)).eval()
    rng = np.random.default_rng(0)
    onset = cv2_blur(rng.integers(0, 256, (64, 64)).astype(np.uint8))
    apex = np.roll(onset, 1, axis=1)  # the scene moves 1 px right
    a, b = (torch.from_numpy(x.astype(np.float32))[None, None] for x in (onset, apex))
    with torch.no_grad():
        out, init = model(a, b)[-1], model.initial(a, b)
    dis = DIS()(onset, apex)
    assert np.allclose(init["facial"][0].permute(1, 2, 0).numpy(), dis, atol=1e-5)  # the same DIS as perception's
    for k in out:
        assert torch.allclose(out[k], init[k], atol=1e-5), k
    # a global shift is all head motion: the fitted head takes it, the expression is near zero
    centre = (slice(16, 48), slice(16, 48))
    assert abs(float(init["head"][0, 0][centre].mean()) - 1) < 0.1
    assert float(init["expression"][0][:, centre[0], centre[1]].norm(dim=0).mean()) < 0.1


def cv2_blur(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), 1.5)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    save_model(MEFlowNet(MEFlowConfig(feature_dim=16, hidden_dim=16, context_dim=8)), folder / "model")
    return folder  # a run-directory layout: folder/model/meflownet.pt


def test_the_backend_plugs_into_analyze_and_records_itself(random_checkpoint, tmp_path):
    from mellm.analyze import PerceptionSettings, analyze_clip
    from mellm.synth import SynthConfig, generate_corpus

    clip = generate_corpus(tmp_path, n=1, seed=2, config=SynthConfig(n_frames=10, width=320, height=240, face_iod=60))[0]
    src = tmp_path / clip.frames_dir
    learned = analyze_clip(src, apex=clip.apex_frame, settings=PerceptionSettings(flow="meflownet",
                                                                                  flow_checkpoint=str(random_checkpoint)))
    classic = analyze_clip(src, apex=clip.apex_frame, settings=PerceptionSettings(flow="dis"))
    ev = learned.evidence
    assert ev.flow_method == "meflownet" and classic.evidence.flow_method == "dis"
    assert ev.head_motion["method"] == "meflownet-head"  # the network's head flow replaced the affine removal
    assert ev.settings["flow_checkpoint"] == str(random_checkpoint) and ev.settings["key"] != classic.evidence.settings["key"]
    assert learned.flow.shape == (256, 256, 2) and not np.allclose(learned.flow, classic.flow)
    spotted = analyze_clip(src, settings=PerceptionSettings(flow="meflownet", spot_flow="meflownet",
                                                            flow_checkpoint=str(random_checkpoint)))
    assert spotted.evidence.apex_source == "spotted" and len(spotted.evidence.motion_curve["frames"]) == 9


def test_bad_checkpoints_inputs_and_configs_are_clear_errors(random_checkpoint, tmp_path):
    from mellm.analyze import PerceptionSettings
    from mellm.cli import app
    from mellm.flow import get_flow

    with pytest.raises(MellmError, match="needs flow_checkpoint"):
        PerceptionSettings(flow="meflownet")
    with pytest.raises(MellmError, match="no MEFlowNet checkpoint at .*nowhere"):
        PerceptionSettings(flow="meflownet", flow_checkpoint=str(tmp_path / "nowhere"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MellmError, match="junk.pt is not a readable MEFlowNet checkpoint"):
        load_model(tmp_path / "junk.pt")
    blob = torch.load(random_checkpoint / "model" / "meflownet.pt", weights_only=True)
    blob["config"]["hidden_dim"] = 24
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(MellmError, match="mismatch.pt: weights do not fit its config"):
        load_model(tmp_path / "mismatch.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(MellmError, match="foreign.pt is not a MEFlowNet checkpoint"):
        load_model(tmp_path / "foreign.pt")

    backend = get_flow("meflownet", str(random_checkpoint))
    with pytest.raises(MellmError, match="multiples of 8"):
        backend(np.zeros((60, 60), np.uint8), np.zeros((60, 60), np.uint8))
    with pytest.raises(MellmError, match="one size"):
        backend(np.zeros((64, 64), np.uint8), np.zeros((64, 72), np.uint8))

    with pytest.raises(MellmError, match=r"unknown config key 'train.stpes' \(did you mean 'train.steps'\?\)"):
        load_config("tiny_cpu", ["train.stpes=3"])
    (tmp_path / "bad.yaml").write_text("model:\n  hiden_dim: 8\n")
    with pytest.raises(MellmError, match=r"bad.yaml: unknown config key 'model.hiden_dim' \(did you mean 'model.hidden_dim'\?\)"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(MellmError, match="train.crop=100"):
        load_config("tiny_cpu", ["train.crop=100"])
    with pytest.raises(MellmError, match="not a flow-data folder"):
        train(load_config("tiny_cpu", [f"data={tmp_path}", f"output_dir={tmp_path / 'r'}"]), progress=False)

    r = CliRunner().invoke(app, ["analyze", str(tmp_path), "--out", str(tmp_path / "o"), "--flow", "meflownet"])
    assert r.exit_code == 2 and "needs flow_checkpoint" in r.output
    r = CliRunner().invoke(app, ["train-flow", "--config", "tiny_cpu", "model.iterations=0"])
    assert r.exit_code == 2 and "model.iterations=0" in r.output
