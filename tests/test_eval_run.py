"""`mellm eval run` against a real OpenAI-compatible HTTP server (FastAPI + uvicorn on 127.0.0.1),
which answers by reading the clip and frame numbers encoded in the images it receives."""

import asyncio
import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image
from typer.testing import CliRunner

from mellm.errors import MellmError
from mellm.eval.run import EndpointError, RunConfig, chat_url, run_eval
from mellm.prompts import SYSTEM_PROMPT, user_text
from mellm.resources import megc_file
from mellm.serve.background import free_port, serve_in_thread

DATA = megc_file("me_vqa_samm_casme2_smic.jsonl").parent  # packaged (mellm.resources)
TRAIN = DATA / "me_vqa_samm_casme2_smic.jsonl"


# --- the server ------------------------------------------------------------------------------

@dataclass
class ServerState:
    answers: dict = field(default_factory=dict)  # (clip number, question) -> answer
    by_question: dict = field(default_factory=dict)  # question -> answer, for images without codes
    api_key: str | None = None
    faults: list = field(default_factory=list)  # consumed one per request: 429, 500, 503 or "slow"
    always_fail: set = field(default_factory=set)  # questions answered with HTTP 500 every time
    seen: list = field(default_factory=list)  # one record per answered request
    n_requests: int = 0


def decode(url: str) -> tuple[int, int]:
    """An image we sent -> (clip number, frame number), from the colour of its pixels."""
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    r, g, b = (int(v) for v in rgb[4, 4])
    if r >= 200:  # the lossy video clip: frame number in steps of 10 of the green channel
        return 9, round(g / 10)
    return r, g * 256 + b


def make_app(state: ServerState) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        state.n_requests += 1
        seen = state.seen  # a slow request finishing after its test must not land in the next test's list
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        body = await request.json()
        if state.faults:
            fault = state.faults.pop(0)
            if fault == "slow":
                await asyncio.sleep(2.0)
            else:
                return JSONResponse({"error": {"message": "busy"}}, status_code=fault)
        system, user = body["messages"]
        text = [p["text"] for p in user["content"] if p["type"] == "text"][0]
        images = [p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url"]
        question = text.split("Question: ", 1)[1]
        if question in state.always_fail:
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        (clip, onset), (_, apex) = decode(images[0]), decode(images[1])
        seen.append({"clip": clip, "onset": onset, "apex": apex, "question": question, "text": text,
                           "system": system["content"][0]["text"], "model": body["model"], "n_images": len(images)})
        answer = state.answers.get((clip, question)) or state.by_question.get(question, "I do not know")
        return {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}]}

    return app


@pytest.fixture(scope="module")
def server():
    state = ServerState()
    with serve_in_thread(make_app(state), lifespan="off") as url:
        yield state, url


# --- the clips ---------------------------------------------------------------------------------

def frame_folder(folder: Path, clip: int, numbers: list[int], name) -> None:
    folder.mkdir(parents=True)
    for n in numbers:
        Image.fromarray(np.full((16, 16, 3), (clip, n // 256, n % 256), np.uint8)).save(folder / name(n))


def video(path: Path, n_frames: int) -> None:
    path.parent.mkdir(parents=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 64))
    for i in range(1, n_frames + 1):
        writer.write(np.full((64, 64, 3), (0, 10 * i, 220), np.uint8))  # BGR: R 220, G = 10 * frame
    writer.release()


@pytest.fixture
def study(tmp_path, server):
    """A question file (two SAMM and two SMIC clips of the real training file, and a CAS(ME)^3 test
    clip as a video), the media for it, and the server primed with the right answers."""
    state, url = server
    state.__init__()
    rows = [json.loads(line) for line in TRAIN.read_text().splitlines()]
    samm_ids = list(dict.fromkeys(r["image_id"] for r in rows if r["dataset"] == "samm"))[:2]
    smic_ids = list(dict.fromkeys(r["image_id"] for r in rows if r["dataset"] == "smic"))[:2]
    chosen = [r for r in rows if r["image_id"] in samm_ids + smic_ids]
    casme3 = {"dataset": "samm_test", "image_id": "dzw_a1_3", "subject": "dzw", "filename": "a1",
              "onset_frame": 3, "offset_frame": 9}
    chosen += [casme3 | {"id": "samm_test_dzw_a1_3_1", "question": "What is the coarse expression class?",
                         "answer": "negative"},
               casme3 | {"id": "samm_test_dzw_a1_3_2", "question": "What are the action units?",
                         "answer": "brow lowerer, lid tightener"}]
    media = tmp_path / "media"
    clip_of = {}
    for k, image_id in enumerate(samm_ids, start=1):  # flat layout, SAMM frame names
        frame_folder(media / "samm" / image_id, k, list(range(5562, 5572)), lambda n: f"006_{n:05d}.png")
        clip_of[image_id] = k
    for k, image_id in enumerate(smic_ids, start=3):  # SMIC's own layout
        subject = f"s{int(image_id[1:3])}"
        folder = media / "SMIC" / "HS" / subject / "micro" / "negative" / image_id.replace(image_id[:3], subject)
        frame_folder(folder, k, list(range(1, 8)), lambda n: f"image{n:06d}.png")
        clip_of[image_id] = k
    video(media / "casme3" / "dzw" / "a1.mp4", 12)
    clip_of["dzw_a1_3"] = 9
    state.answers = {(clip_of[r["image_id"]], r["question"]): r["answer"] for r in chosen}
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    expected_frames = {1: (5562, 5566), 2: (5562, 5566), 3: (1, 4), 4: (1, 4), 9: (3, 6)}
    return state, url, questions, media, chosen, expected_frames


def config(study, out: Path, **kw) -> RunConfig:
    _, url, questions, media, _, _ = study
    settings = dict(concurrency=3, timeout_s=10.0, retries=3, backoff_s=0.01, progress=False) | kw
    return RunConfig(questions=questions, media_root=media, endpoint=url, model="mellm-test", out=out, **settings)


def prediction_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


# --- tests -----------------------------------------------------------------------------------

def test_chat_url_forms():
    assert chat_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_run_asks_every_question_with_the_right_frames_and_scores(study, tmp_path):
    state, _, _, _, chosen, expected_frames = study
    summary = run_eval(config(study, tmp_path / "out"))
    assert summary.failures == [] and summary.answered == len(chosen)
    assert sorted(prediction_ids(summary.predictions)) == sorted(r["id"] for r in chosen)
    for seen in state.seen:
        assert (seen["onset"], seen["apex"]) == expected_frames[seen["clip"]]
        # the prompt is the shared builder's, with the onset and apex images
        assert seen["text"] == user_text(seen["question"], ("onset", "apex"))
        assert (seen["system"], seen["model"], seen["n_images"]) == (SYSTEM_PROMPT, "mellm-test", 2)
    r = summary.report
    assert r.coarse.overall.uf1 == 1.0 and r.au.micro_f1 == 1.0 and r.text.rouge1 == 1.0
    assert set(r.coarse.per_dataset) == {"casme3", "samm", "smic"}
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["counts"]["asked"] == record["counts"]["answered"] == len(chosen)
    assert record["settings"]["api_key"] is None
    assert (tmp_path / "out" / "report.md").exists()


def test_retries_429_5xx_and_timeouts(study, tmp_path):
    state = study[0]
    state.faults = [429, 500, "slow", 503]
    summary = run_eval(config(study, tmp_path / "out", timeout_s=0.5))
    assert summary.failures == []
    assert len(prediction_ids(summary.predictions)) == len(study[4])
    assert state.n_requests == len(study[4]) + 4  # one extra request per injected fault
    assert summary.report.coarse.overall.uf1 == 1.0


def test_rerun_skips_answered_ids_and_recovers_a_cut_off_line(study, tmp_path):
    state, chosen = study[0], study[4]
    out = tmp_path / "out"
    first = run_eval(config(study, out, limit=5))
    assert first.answered == 5
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"id": "' + chosen[-1]["id"] + '", "ans')  # an interrupted write
    state.seen.clear()
    second = run_eval(config(study, out))
    assert second.already_answered == 5 and second.answered == len(chosen) - 5
    ids = prediction_ids(out / "predictions.jsonl")  # every line is whole again
    assert sorted(ids) == sorted(r["id"] for r in chosen) and len(ids) == len(set(ids))
    assert len(state.seen) == len(chosen) - 5
    assert second.report.issues == []
    assert "cut-off" in json.dumps(json.loads((out / "run.json").read_text())["clip_notes"])


def test_api_key_and_a_refusing_endpoint(study, tmp_path):
    state = study[0]
    state.api_key = "sekret"
    with pytest.raises(EndpointError, match="HTTP 401"):
        run_eval(config(study, tmp_path / "a"))
    summary = run_eval(config(study, tmp_path / "b", api_key="sekret"))
    assert summary.failures == []
    assert "sekret" not in (tmp_path / "b" / "run.json").read_text()


def test_an_endpoint_nobody_listens_on_stops_the_run(study, tmp_path):
    port = free_port()  # free a moment ago; nobody listens on it
    cfg = config(study, tmp_path / "out", retries=1)
    cfg.endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(EndpointError, match=r"cannot connect.*after 2 attempts; is the server running"):
        run_eval(cfg)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["counts"]["asked"] == len(study[4])


def test_a_question_that_keeps_failing_is_recorded_and_the_cli_exits_1(study, tmp_path):
    from mellm.cli import app

    state, url, questions, media, chosen, _ = study
    state.always_fail = {"What is the fine-grained expression class?"}
    n_fine = sum(r["question"] == "What is the fine-grained expression class?" for r in chosen)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "run", "--questions", str(questions), "--media-root", str(media),
                                      "--endpoint", url, "--model", "m", "--out", str(out), "--retries", "1",
                                      "--backoff", "0.01", "--no-progress"])
    assert result.exit_code == 1, result.output
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == n_fine > 0
    assert all("gave up after 2 attempts; last error: HTTP 500" in f["error"] for f in failures)
    assert len(prediction_ids(out / "predictions.jsonl")) == len(chosen) - n_fine
    assert "rerun the same command" in result.output


def test_missing_media_is_a_clear_error(study, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = config(study, tmp_path / "out")
    cfg.media_root = empty
    with pytest.raises(MellmError, match="no clip of .* was found under .*empty: no clip for question"):
        run_eval(cfg)


def test_evidence_sends_crops_flow_map_and_the_motion_description(server, tmp_path):
    """--evidence on a synthetic clip (mellm.synth): perception spots the apex and its description
    goes into the shared prompt with the onset crop, apex crop and flow colour map."""
    synth = pytest.importorskip("mellm.synth")
    pytest.importorskip("mellm.analyze")
    state, url = server
    state.__init__()
    media = tmp_path / "media"
    synth.generate_corpus(media, n=1, seed=1, config=synth.SynthConfig(
        n_frames=24, width=320, height=240, drift_fraction=0.0, fmt="frames"))
    label = json.loads((media / "labels.jsonl").read_text().splitlines()[0])
    rows = [{"id": f"syn_{k}", "dataset": "synth", "image_id": label["clip_id"], "video": label["frames_dir"],
             "onset_frame": label["onset_frame"], "offset_frame": label["offset_frame"], "question": q, "answer": a}
            for k, (q, a) in enumerate([("What is the coarse expression class?", label["coarse"]),
                                        ("What is the fine-grained expression class?", label["fine"])])]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    state.by_question = {r["question"]: r["answer"] for r in rows}
    cfg = RunConfig(questions=questions, media_root=media, endpoint=url, model="m", out=tmp_path / "out",
                    evidence=True, progress=False, backoff_s=0.01)
    summary = run_eval(cfg)
    assert summary.failures == [] and summary.answered == 2
    assert summary.report.coarse.overall.uf1 == 1.0
    for seen in state.seen:
        assert seen["n_images"] == 3
        head, question = seen["text"].split("\nQuestion: ")
        description = head.split("Measured facial motion (onset to apex): ", 1)[1]
        assert description.startswith(f"Facial motion from onset frame {label['onset_frame']} to apex frame")
        assert seen["text"] == user_text(question, ("onset", "apex", "flow"), description)


def test_gateway_mode_records_bad_replies_as_failures_and_a_rerun_answers_them(study, tmp_path):
    """Through `eval run --gateway path`: a reply that misses an answer, one that is not JSON and one that
    breaks the contract (serve/contract.py) each become per-question failures; the run goes on, and the
    same command again asks exactly those questions."""
    from mellm.serve.contract import AnalyzeReply, Answer, EvidenceSummary, ParsedLabels

    _, _, questions, media, chosen, _ = study
    faults = ["missing", "not_json", "malformed"]  # for the first three clips, the first time each is asked
    fault_of: dict[str, str] = {}
    asked: list[tuple[str, list[str]]] = []
    app = FastAPI()

    @app.post("/v1/me/analyze")
    async def analyze(request: Request):
        form = await request.form()
        path, qs = form["path"], form.getlist("question")
        first = all(p != path for p, _ in asked)
        asked.append((path, qs))
        fault = (fault_of.setdefault(path, faults.pop(0)) if faults else None) if first else None
        if fault == "not_json":
            return PlainTextResponse("<html>proxy error</html>")
        if fault == "malformed":
            return {"clip": path, "answers": "none"}
        answers = [Answer(question=q, qtype="coarse", answer=f"{path} | {q}", parsed=ParsedLabels()) for q in qs]
        evidence = EvidenceSummary(clip=path, n_frames=10, onset_frame=1, apex_frame=4, apex_source="given",
                                   flow_method="tvl1", aus=[], description="", schema_version=2)
        reply = AnalyzeReply(clip=path, model="m", answers=answers[:-1] if fault == "missing" else answers,
                             evidence=evidence, timings_ms={})
        return reply.model_dump()

    out = tmp_path / "out"
    with serve_in_thread(app, lifespan="off") as url:
        cfg = RunConfig(questions=questions, media_root=media, endpoint=url, model="m", out=out, gateway="path",
                        concurrency=1, retries=0, progress=False)
        first = run_eval(cfg)
        by_id = {r["id"]: r for r in chosen}
        errors = sorted(f["error"].split(":")[0] for f in first.failures)
        n_of = {p: len(qs) for p, qs in asked}
        missing, not_json, malformed = (next(p for p, f in fault_of.items() if f == k)
                                        for k in ("missing", "not_json", "malformed"))
        assert len(first.failures) == 1 + n_of[not_json] + n_of[malformed]
        assert errors.count("the gateway's reply has no answer to this question") == 1
        assert errors.count("the gateway's reply is not JSON") == n_of[not_json]
        assert errors.count("malformed gateway reply") == n_of[malformed]
        assert first.answered + len(first.failures) == len(chosen)
        recorded = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
        assert sorted(f["id"] for f in recorded) == sorted(f["id"] for f in first.failures)

        asked.clear()
        second = run_eval(cfg)
        assert second.failures == [] and second.answered == len(first.failures)
        assert sum(len(qs) for _, qs in asked) == len(first.failures)  # only what had failed is asked again
        assert sorted(prediction_ids(out / "predictions.jsonl")) == sorted(by_id)
        answers = {json.loads(line)["id"]: json.loads(line)["answer"] for line in (out / "predictions.jsonl").open()}
        assert all(answers[i].endswith(" | " + by_id[i]["question"]) for i in by_id)
