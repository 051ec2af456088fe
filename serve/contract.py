"""The ME gateway's HTTP contract: what `POST /v1/me/analyze` takes and what it answers.

One definition, read by three parties: the gateway (FastAPI's `response_model`, so the reply's JSON
schema is in the OpenAPI document it serves at /openapi.json), `mellm ask` (serve/client.py) and
`mellm eval run --gateway` (eval/run.py). The request is multipart form data: the clip (a `file`
upload, or a `path` under the gateway's media root) plus the fields of `AnalyzeOptions`.

Errors on every route are OpenAI-style, `{"error": {"message", "type", "code"}}` (`ErrorReply`), so
OpenAI clients pointed at the gateway read them as they read vLLM's.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class AnalyzeOptions(BaseModel):
    """The form fields of an analyze request besides the clip itself."""

    model_config = ConfigDict(extra="forbid")

    questions: list[str] = Field(default_factory=list, description="Questions to ask; none: the open analysis question.")
    onset: Optional[int] = Field(None, description="Onset frame, numbered as the annotation files do.")
    apex: Optional[int] = Field(None, description="Apex frame; none: spotted by perception.")
    offset: Optional[int] = Field(None, description="Offset frame; bounds apex spotting.")
    model: Optional[str] = Field(None, description="Served model or adapter name; none: the gateway's default.")
    max_tokens: Optional[int] = Field(None, description="Answer length limit in tokens.")
    views: bool = Field(False, description="Also return the pictures a person looks at (AnalyzeReply.views) and "
                                          "the motion curve, even when the apex is given.")

    def form(self) -> dict[str, str | list[str]]:
        """The multipart form fields, as the gateway reads them (`question` repeats)."""
        fields: dict[str, str | list[str]] = {"question": list(self.questions)}
        for key in ("onset", "apex", "offset", "model", "max_tokens"):
            value = getattr(self, key)
            if value is not None:
                fields[key] = str(value)
        if self.views:
            fields["views"] = "true"
        return fields


class ParsedLabels(BaseModel):
    """The labels an answer states, read by the shared parser (mellm.answers.parse_answer)."""

    coarse: Optional[str] = None
    fine: Optional[str] = None
    aus: list[int] = Field(default_factory=list)
    yes_no: Optional[bool] = None
    side: Optional[str] = None
    count: Optional[int] = None
    event_type: Optional[str] = None
    parsed: bool = False
    problem: Optional[str] = None


class AUClaim(BaseModel):
    """An AU an answer names, checked against the clip's AU evidence."""

    au: int
    name: str
    supported: bool = Field(description="The evidence supports the claim: perception judged this AU present (its "
                                        "score reaches 0.5) and, where the answer gives it a side, on that side or "
                                        "both (mellm.aus.claim_support, as the GRPO evidence reward).")
    score: Optional[float] = Field(None, description="The evidence's score for this AU; none: perception does not score it.")
    side: Optional[str] = Field(None, description="The side the evidence puts it on (L, R, both).")


class Answer(BaseModel):
    question: str
    qtype: str = Field(description="The question's ME-VQA type (mellm.vqa.QType).")
    answer: str
    parsed: ParsedLabels
    claims: list[AUClaim] = Field(default_factory=list, description="Each AU the answer claims (names, or says "
                                                                 "yes to), supported or not.")


class RegionShape(BaseModel):
    """Where a region lies on the face crops, in crop pixels."""

    key: str
    name: str
    side: str
    x: float
    y: float
    r: float


class Views(BaseModel):
    """What a person looks at (asked for with `views`): PNG images as data URLs, by role (onset and
    apex face crops, flow colour map and magnitude overlay, each map with its legend strip below
    the crop), and the regions' disks on the crop."""

    crop_size: int
    images: dict[str, str]
    regions: list[RegionShape]


class QuestionError(BaseModel):
    """A question the gateway could not answer while it answered the others."""

    question: str
    status: int = Field(description="The HTTP status this question alone would have got.")
    message: str


class EvidenceSummary(BaseModel):
    """The clip's Evidence record (docs/formats.md). The fields clients read are typed; the rest
    (regions, AU scores, settings, motion curve, ...) come along as they are."""

    model_config = ConfigDict(extra="allow")

    clip: str
    n_frames: int
    fps: Optional[float] = None
    onset_frame: int
    apex_frame: int
    offset_frame: Optional[int] = None
    apex_source: str
    flow_method: str
    aus: list[dict[str, Any]]
    description: str
    schema_version: int


class AnalyzeReply(BaseModel):
    clip: str = Field(description="The clip as the client named it (upload file name or media path).")
    model: str
    answers: list[Answer] = Field(description="One per question answered, in the order asked.")
    errors: list[QuestionError] = Field(default_factory=list, description="Questions that got no answer.")
    evidence: EvidenceSummary
    timings_ms: dict[str, float] = Field(description="receive, perception, llm, overhead, total.")
    views: Optional[Views] = Field(None, description="Only when asked for with `views`.")


class ErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, "
                                  "request_too_large, rate_limit_error, timeout_error, upstream_error, ...")
    code: int = Field(description="The HTTP status.")


class ErrorReply(BaseModel):
    error: ErrorBody


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
               415: "unsupported_media_type", 422: "invalid_request_error", 429: "rate_limit_error",
               502: "upstream_error", 503: "service_unavailable", 504: "timeout_error"}


# The error answers the analyze routes document in the OpenAPI schema.
ERROR_RESPONSES = {code: {"model": ErrorReply} for code in (400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504)}


def error_reply(status: int, message: str) -> dict:
    """The JSON body of an error answer with HTTP `status`."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return ErrorReply(error=ErrorBody(message=message, type=kind, code=status)).model_dump()


def error_message(body: Any, fallback: str) -> str:
    """The reason an error reply gives (OpenAI-style, or FastAPI's `detail`), else `fallback`."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if "detail" in body:
            return str(body["detail"])
    return fallback


class ReplyError(ValueError):
    """A gateway reply that does not follow the contract."""


def read_reply(data: Any) -> AnalyzeReply:
    """Validate a decoded JSON reply; a malformed one is a ReplyError naming what is wrong."""
    try:
        return AnalyzeReply.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ReplyError(f"malformed gateway reply: {where}: {first['msg']} ({e.error_count()} problem(s))") from None


def answers_by_question(reply: AnalyzeReply, questions: list[str]) -> tuple[dict[int, str], dict[int, str]]:
    """Match a reply to the questions asked, by position and text: ({index: answer}, {index: why not}).
    Every question asked lands in exactly one of the two."""
    answers: dict[int, str] = {}
    missing: dict[int, str] = {}
    errors = {e.question: e for e in reply.errors}
    pool = list(reply.answers)
    for i, q in enumerate(questions):
        j = next((k for k, a in enumerate(pool) if a.question == q), None)
        if j is not None:
            answers[i] = pool.pop(j).answer.strip()
        elif q in errors:
            missing[i] = f"HTTP {errors[q].status}: {errors[q].message}"
        else:
            missing[i] = "the gateway's reply has no answer to this question"
    return answers, missing


class SpottedEventSummary(BaseModel):
    onset: int
    apex: int
    offset: int
    type: str = Field(description="micro (<= 0.5 s) or macro.")
    confidence: float
    peak_z: Optional[float] = Field(None, description="The motion score's peak over the noise, in noise units.")
    regions: list[str] = Field(default_factory=list, description="Region groups that moved most, strongest first.")
    aus: list[int] = Field(default_factory=list, description="From the event's onset -> apex evidence.")
    evidence: Optional[EvidenceSummary] = Field(None, description="The event's onset -> apex Evidence, as a short "
                                                                  "clip gets it; none when its perception failed "
                                                                  "(the reply's notes say why).")
    views: Optional[Views] = Field(None, description="Only when asked for with `views`.")
    answers: list[Answer] = Field(default_factory=list, description="The event questions (`event_question`), asked "
                                                                   "with this event's pictures and evidence.")
    errors: list[QuestionError] = Field(default_factory=list)


class EventAnswer(BaseModel):
    question: str
    answer: str


class LongCurve(BaseModel):
    """The spotter's motion score over the video (noise units over rest), at most `MAX_CURVE_POINTS`
    points: a longer curve is cut into that many stretches, each shown by its highest score."""

    frames: list[int]
    score: list[Optional[float]] = Field(description="None where no face was found.")
    z_high: float = Field(description="An event's peak reaches this.")
    z_low: float = Field(description="An event extends while the score stays above this.")
    frames_per_point: int = Field(description="1: every analysed frame; more: the curve was thinned.")


class LongAnalyzeReply(BaseModel):
    """`/v1/me/analyze_long`: one long video, spotted once; every question answered from that one event list."""

    clip: str
    model: str
    fps: float
    n_frames: int
    events: list[SpottedEventSummary]
    event_list: str = Field(description="The event list the model was shown (mellm.lvqa.event_list_text).")
    answers: list[Answer] = Field(description="The model's answers, in the order asked.")
    baseline: list[EventAnswer] = Field(description="The model-free answers straight from the event list, side by side.")
    errors: list[QuestionError] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="Variable frame rate, truncation, face gaps, ...")
    face_gaps: list[list[int]] = Field(default_factory=list, description="[first, last] frames without a face.")
    curve: Optional[LongCurve] = Field(None, description="Only when asked for with `views`.")
    timings_ms: dict[str, float] = Field(description="receive, spotting, llm, total.")
