"""The gateway's typed contract (serve/contract.py), seen over real HTTP with no model server behind:
its reply schema is in the OpenAPI document the gateway serves, and errors are OpenAI-style."""

import httpx
import pytest

from mellm.serve.background import free_port, serve_in_thread
from mellm.serve.contract import AnalyzeOptions, AnalyzeReply, ReplyError, answers_by_question, read_reply
from mellm.serve.gateway import GatewayConfig, create_app


@pytest.fixture(scope="module")
def gateway():
    cfg = GatewayConfig(upstream=f"http://127.0.0.1:{free_port()}", model="m", api_key="k")
    with serve_in_thread(create_app(cfg)) as url:
        yield url


def test_the_reply_schema_is_in_the_openapi_document(gateway):
    doc = httpx.get(gateway + "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert {"answers", "errors", "evidence", "timings_ms", "clip", "model"} <= set(schemas["AnalyzeReply"]["properties"])
    assert set(schemas["ParsedLabels"]["properties"]) >= {"coarse", "fine", "aus", "yes_no", "side", "count", "event_type"}
    responses = doc["paths"]["/v1/me/analyze"]["post"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/AnalyzeReply")
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorReply")
    assert schemas["AnalyzeReply"]["required"] == AnalyzeReply.model_json_schema()["required"]
    form = doc["paths"]["/v1/me/analyze"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["$ref"]  # the multipart form (file or path, and AnalyzeOptions' fields)
    fields = schemas[form["$ref"].rsplit("/", 1)[1]]["properties"]
    assert {"file", "path", "question", "onset", "apex", "offset", "model", "max_tokens"} <= set(fields)
    assert set(AnalyzeOptions(questions=["q"], onset=1).form()) == {"question", "onset"}


def test_errors_are_openai_style(gateway):
    r = httpx.post(gateway + "/v1/me/analyze", data={"question": "q"})
    assert r.status_code == 401
    assert r.json() == {"error": {"message": "missing or wrong API key (send Authorization: Bearer <key>)",
                                  "type": "authentication_error", "code": 401}}
    r = httpx.post(gateway + "/v1/me/analyze", data={"question": "q"}, headers={"Authorization": "Bearer k"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "no clip" in r.json()["error"]["message"]
    r = httpx.post(gateway + "/v1/me/analyze", data={"onset": "first"}, headers={"Authorization": "Bearer k"})
    assert r.status_code == 422 and "onset" in r.json()["error"]["message"]


def test_read_reply_and_matching_answers_to_questions():
    with pytest.raises(ReplyError, match="malformed gateway reply: answers"):
        read_reply({"clip": "c", "model": "m", "answers": "none", "evidence": {}, "timings_ms": {}})
    evidence = {"clip": "c", "n_frames": 3, "onset_frame": 1, "apex_frame": 2, "apex_source": "given",
                "flow_method": "dis", "aus": [], "description": "", "schema_version": 2, "regions": []}
    reply = read_reply({"clip": "c", "model": "m", "evidence": evidence, "timings_ms": {"total": 1.0},
                        "answers": [{"question": "b", "qtype": "fine", "answer": " B ", "parsed": {}}],
                        "errors": [{"question": "c", "status": 400, "message": "prompt too long"}]})
    assert reply.evidence.model_extra == {"regions": []}  # untyped evidence fields come along
    answers, missing = answers_by_question(reply, ["a", "b", "c"])
    assert answers == {1: "B"}
    assert missing == {0: "the gateway's reply has no answer to this question", 2: "HTTP 400: prompt too long"}
