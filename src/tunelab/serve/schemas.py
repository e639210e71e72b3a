"""The OpenAI-compatible request bodies the server accepts, and its OpenAI-style errors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# -- errors --------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- request bodies ------------------------------------------------------------------------------


class Body(BaseModel):
    # unknown fields from newer clients are ignored; the ones we cannot honour are refused below
    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


# What the sampler can take: torch.Generator.manual_seed overflows outside this range, and below
# MIN_TEMPERATURE logits / temperature overflow float32 to inf (the sampler's probabilities become NaN).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
MIN_TEMPERATURE = 1e-5


class SamplingBody(Body):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | int | None = None

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, seed: int | None) -> int | None:
        if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
            raise ValueError("must be an integer from -2**63 to 2**64 - 1")
        return seed

    @field_validator("temperature")
    @classmethod
    def _temperature_not_tiny(cls, temperature: float | None) -> float | None:
        if temperature is not None and 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}")
        return temperature

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "stop: at most 4 stop sequences", param="stop")
        if any(not s for s in stops):
            raise ApiError(400, "stop: stop sequences must be non-empty", param="stop")
        return stops

    def check_supported(self) -> None:
        if self.n not in (None, 1):
            raise ApiError(400, "n: only n=1 is supported", param="n")
        if self.logprobs:
            raise ApiError(400, "logprobs: not supported by this server", param="logprobs")


class ChatRequest(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools:
            raise ApiError(400, "tools: tool calling is not supported by this server", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ApiError(400, "response_format: only {'type': 'text'} is supported", param="response_format")
        if self.messages[-1].role == "assistant":
            raise ApiError(400, "messages: the last message must be a user or system message", param="messages")


class CompletionRequest(SamplingBody):
    prompt: str | list[str] | list[int]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise ApiError(400, "echo: not supported by this server", param="echo")
        if self.suffix:
            raise ApiError(400, "suffix: not supported by this server", param="suffix")
        if self.best_of not in (None, 1):
            raise ApiError(400, "best_of: only 1 is supported", param="best_of")


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-"))
    msg = err.get("msg", "invalid value")
    if err.get("type") == "missing":
        msg = "required field is missing"
    elif err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    return (f"{loc}: {msg}" if loc else msg), (loc or None)
