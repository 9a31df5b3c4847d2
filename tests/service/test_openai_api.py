"""The OpenAI-compatible endpoint driven by the official openai client, in front of tiny-llama.

One `pinfer up --openai-port 0` (one slot, no queue, so a second request at once is refused) serves
the module; `pinfer serve-openai`, the endpoint on its own, is started once more with an API key. The
texts are compared with `pinfer generate` on the same prompt. Generations are 3 tokens, except where
a stop string or a closed stream must end a longer one early: there the party's log shows that the
session was cancelled rather than run to its end. The stop-string and end-of-sequence logic is also
checked without a service, on a fake client."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from pinfer.cli import main
from pinfer.service.client import Token
from pinfer.service.completion import StopStrings, TextCompletion

MODEL = "tiny-llama"
PROMPT = "hello world"  # tiny-llama's greedy answer starts "nnn\x04": text enough to cut with a stop string
TOKENS = 3
LONG = 40  # a generation that only a cancellation ends within the test


@dataclass(frozen=True)
class Up:
    """A running `pinfer up --openai-port 0`: its state directory and what it printed."""

    root: Path
    endpoint: str
    ca: str
    base_url: str

    @property
    def token_file(self) -> str:
        return str(self.root / "client.token")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """The one command: the service's processes and the HTTP endpoint (one slot, no queue)."""
    root = tmp_path_factory.mktemp("pinfer-up")
    errors = open(root / "up.stderr", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pinfer.cli", "up", "--model", MODEL, "--dir", str(root), "--slots", "1",
         "--queue", "0", "--openai-port", "0"],
        stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, text=True)
    errors.close()
    try:
        printed: dict[str, str] = {}
        for line in process.stdout:  # type: ignore[union-attr]
            key, _, value = line.partition(" : ")
            printed[key.strip()] = value.split()[0] if value.strip() else ""
            if line.startswith("A process that exits"):
                break
        assert {"endpoint", "ca", "openai api"} <= set(printed), (root / "up.stderr").read_text()
        yield Up(root, printed["endpoint"], printed["ca"], printed["openai api"])
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert PROMPT not in (root / "up.stderr").read_text()  # its log holds public counts only


@pytest.fixture(scope="module")
def base_url(up: Up) -> str:
    return up.base_url


@pytest.fixture(scope="module")
def api(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300) as client:
        yield client


def _pinfer_generate(up: Up, *extra: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["generate", "--endpoint", up.endpoint, "--token-file", up.token_file,
                     "--ca", up.ca, "--model", MODEL, "--prompt", PROMPT,
                     "--max-new-tokens", str(TOKENS), "--json", *extra]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def generated(up: Up) -> dict[str, Any]:
    """`pinfer generate` on PROMPT: as a chat turn, and raw (``--raw``)."""
    return {"chat": _pinfer_generate(up), "raw": _pinfer_generate(up, "--raw")}


def _expected_usage(report: dict[str, Any]) -> tuple[int, int, int]:
    """prompt, completion and total tokens of a generation that ran to its length (no stop token)."""
    return report["prompt_tokens"], len(report["tokens"]), report["prompt_tokens"] + len(report["tokens"])


def _session_outcomes(up: Up) -> list[str]:
    """How party 0 says each of its sessions ended so far ("done", "cancelled", ...), in order."""
    lines = (up.root / "party0.log").read_text().splitlines()
    return [line.rsplit(": ", 1)[1] for line in lines if " session " in line and "worker" not in line]


def _next_session_outcome(up: Up, seen: int, timeout_s: float = 60) -> str:
    """How the first session after the ``seen`` ones ended, once it has."""
    deadline = time.monotonic() + timeout_s
    while len(outcomes := _session_outcomes(up)) <= seen:
        assert time.monotonic() < deadline, "party 0's next session did not end"
        time.sleep(0.2)
    return outcomes[seen]


def _http(base_url: str, path: str, body: dict[str, Any] | bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """A request as curl sends it (a GET without a body): status and JSON body."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- against the service -----------------------------------------------------------------------------


def test_openai_models(api: openai.OpenAI) -> None:
    assert [m.id for m in api.models.list().data] == [MODEL]
    assert api.models.retrieve(MODEL).owned_by == "pinfer"


def test_openai_chat_completion_equals_pinfer_generate(api: openai.OpenAI, generated: dict[str, Any]) -> None:
    report = generated["chat"]
    assert report["text"], "the comparison needs a non-empty text"
    response = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=TOKENS, temperature=0)
    choice = response.choices[0]
    assert choice.message.content == report["text"] and choice.message.role == "assistant"
    assert choice.finish_reason == "length" and response.object == "chat.completion" and response.model == MODEL
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == _expected_usage(report)


def test_openai_streamed_chat_completion_equals_pinfer_generate(api: openai.OpenAI, generated: dict[str, Any]) -> None:
    report = generated["chat"]
    chunks = list(api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                              max_tokens=TOKENS, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == report["text"]
    assert sum(1 for d in deltas if d.content) >= 2  # the text arrived in pieces, as the tokens came
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == report["prompt_tokens"]
    assert chunks[-1].usage.completion_tokens == len(report["tokens"])


def test_openai_completion_equals_pinfer_generate_raw(api: openai.OpenAI, generated: dict[str, Any]) -> None:
    report = generated["raw"]
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=TOKENS, temperature=0)
    assert response.choices[0].text == report["text"] and response.object == "text_completion"
    assert response.usage.prompt_tokens == report["prompt_tokens"]
    assert response.usage.completion_tokens == len(report["tokens"])
    by_ids = api.completions.create(model=MODEL, prompt=[5, 6, 7], max_tokens=1)
    assert by_ids.usage.prompt_tokens == 3  # token ids are sent as they are


def test_openai_kv_policy_and_budget_as_extra_fields(up: Up, api: openai.OpenAI) -> None:
    """pinfer's request fields ride in the body (the openai client's ``extra_body``) and reach the
    parties as ``pinfer generate --kv-policy`` does: the same tokens."""
    report = _pinfer_generate(up, "--raw", "--kv-policy", "streamingllm", "--kv-budget", "0.5")
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=TOKENS, temperature=0,
                                      extra_body={"kv_policy": "streamingllm", "kv_budget": 0.5})
    assert response.choices[0].text == report["text"] and report["kv_policy"] == "streamingllm"


def test_openai_stop_string_ends_and_cancels_the_generation(up: Up, api: openai.OpenAI,
                                                            generated: dict[str, Any]) -> None:
    text = generated["raw"]["text"]
    assert text.startswith("nnn")  # tiny-llama's answer, continuing "\x04" (see PROMPT)
    seen = len(_session_outcomes(up))
    response = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=LONG, stop=["n\x04", "zz"])
    assert response.choices[0].text == "nn" and response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == 4  # "n", "n", "n", "\x04": the stop string was complete
    assert _next_session_outcome(up, seen) == "cancelled"


def test_openai_error_bodies(base_url: str, api: openai.OpenAI) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1}
    refused = [
        ({"temperature": 0.7}, "temperature", "unsupported_value"),
        ({"n": 2}, "n", "unsupported_value"),
        ({"logprobs": True}, "logprobs", "unsupported_value"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "unsupported_value"),
        ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_value"),
        ({"best_of_luck": 1}, "best_of_luck", "unknown_parameter"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": 10_000}, "max_tokens", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"kv_policy": "nope"}, "kv_policy", "invalid_value"),
        ({"kv_policy": "h2o", "kv_budget": 2}, "kv_budget", "invalid_value"),
        ({"kv_budget": "half"}, "kv_budget", "invalid_value"),
        ({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}, "messages",
         "unsupported_value"),  # tiny-llama's tokenizer has no chat template for more than one user turn
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}, "messages[0].role",
         "unsupported_value"),
    ]
    for change, param, code in refused:
        status, body = _http(base_url, "/chat/completions", {**chat, **change})
        assert status == 400 and set(body) == {"error"}, (change, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == (
            "invalid_request_error", param, code), change
    with pytest.raises(openai.BadRequestError) as info:
        api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=1.0)
    assert info.value.status_code == 400 and info.value.param == "temperature" and info.value.code == "unsupported_value"
    with pytest.raises(openai.BadRequestError) as info:
        api.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=1)
    assert info.value.param == "prompt"
    status, body = _http(base_url, "/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = _http(base_url, "/chat/completions")
    assert status == 405 and set(body["error"]) == {"message", "type", "param", "code"}
    status, body = _http(base_url, "/embeddings", {"model": MODEL, "input": "x"})
    assert status == 404 and body["error"]["code"] == "not_found"


def test_openai_unknown_model(base_url: str, api: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        api.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert info.value.status_code == 404 and info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="no-such-model", prompt="hi", max_tokens=1, stream=True)
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("no-such-model")
    status, body = _http(base_url, "/completions", {"model": "no-such-model", "prompt": "hi"})
    assert status == 404 and body["error"]["message"].startswith("The model `no-such-model` does not exist")


def test_openai_busy_service_and_a_closed_stream(up: Up, api: openai.OpenAI) -> None:
    """With the one slot taken: a second request is 429, or an error event once its stream has begun;
    closing the first stream cancels its generation."""
    seen = len(_session_outcomes(up))
    stream = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=LONG, stream=True)
    first = next(iter(stream))  # a token has arrived: the session holds the slot
    assert first.choices[0].text
    with pytest.raises(openai.RateLimitError) as info:
        api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=1)
    assert info.value.status_code == 429 and info.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.APIError) as streamed:
        list(api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=1,
                                         stream=True))
    assert streamed.value.code == "rate_limit_exceeded"
    stream.close()
    assert _next_session_outcome(up, seen) == "cancelled"


def test_openai_caller_gone_cancels_a_completion_that_is_not_streamed(up: Up, base_url: str) -> None:
    seen = len(_session_outcomes(up))
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=2) as impatient, \
            pytest.raises(openai.APITimeoutError):
        impatient.completions.create(model=MODEL, prompt=PROMPT, max_tokens=LONG)
    assert _next_session_outcome(up, seen) == "cancelled"


def test_openai_serve_openai_requires_its_api_key(up: Up, tmp_path: Path) -> None:
    """`pinfer serve-openai`, the endpoint on its own in front of a running service, with an API key."""
    (tmp_path / "api.key").write_text("sesame\n")
    port_file = tmp_path / "http.port"
    with open(tmp_path / "serve-openai.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pinfer.cli", "serve-openai", "--endpoint", up.endpoint, "--token-file",
             up.token_file, "--ca", up.ca, "--port", "0", "--port-file", str(port_file),
             "--api-key-file", str(tmp_path / "api.key")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, (tmp_path / "serve-openai.log").read_text()
            assert time.monotonic() < deadline, "serve-openai did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{int(port_file.read_text())}/v1"
        with openai.OpenAI(base_url=url, api_key="wrong", max_retries=0) as client, \
                pytest.raises(openai.AuthenticationError) as info:
            client.models.list()
        assert info.value.code == "invalid_api_key"
        with openai.OpenAI(base_url=url, api_key="sesame", max_retries=0) as client:
            assert [m.id for m in client.models.list().data] == [MODEL]
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "sesame" not in (tmp_path / "serve-openai.log").read_text()


# --- the completion logic, without a service ---------------------------------------------------------


@pytest.mark.parametrize("pieces, stops, emitted, stopped", [
    (["ab", "c<", "/s", ">tail"], ["</s>"], "abc", True),
    (["a<", "b"], ["</s>"], "a<b", False),  # held "<" is released once it cannot start the stop string
    (["xy", "z"], ["yz", "xyz"], "", True),  # the earliest match wins
    (["ab"], [""], "ab", False),  # an empty stop string stops nothing
    (["a<"], ["<<"], "a<", False),  # at the end of the text, what was held back is flushed
])
def test_openai_stop_strings(pieces: list[str], stops: list[str], emitted: str, stopped: bool) -> None:
    matcher = StopStrings(stops)
    out = "".join(matcher.feed(p) for p in pieces)
    assert matcher.stopped == stopped
    assert out + ("" if stopped else matcher.flush()) == emitted


class _FakeModel:
    name = "fake"
    eos_token_ids = (0,)


class _FakeTokenizer:
    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i - 1) for i in ids)


class _FakeClient:
    """Serves a fixed token sequence and records whether the stream was read to its end or closed early."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids
        self.closed_early = False

    def tokenizer(self, model: object) -> _FakeTokenizer:
        return _FakeTokenizer()

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int, model: str | None = None,
                     kv_policy: str | None = None, kv_budget: float | None = None) -> Iterator[Token]:
        sent = 0
        try:
            for step, token_id in enumerate(self.token_ids[:max_new_tokens]):
                yield Token(step, token_id, "prefill" if step == 0 else "decode", ())
                sent += 1
        finally:
            self.closed_early = sent < min(max_new_tokens, len(self.token_ids))


@pytest.mark.parametrize("token_ids, max_tokens, stop, text, finish, used, closed_early", [
    ([1, 2, 3, 4], 4, (), "abcd", "length", 4, False),
    ([1, 2, 0, 4, 5], 5, (), "ab", "stop", 3, True),  # end of sequence: the rest is cancelled
    ([1, 2, 3, 4, 5], 5, ("bc",), "a", "stop", 3, True),
    ([1, 2, 3], 3, ("cd",), "abc", "length", 3, False),
])
def test_openai_text_completion_ends_at_eos_or_stop(token_ids: list[int], max_tokens: int, stop: tuple[str, ...],
                                                    text: str, finish: str, used: int, closed_early: bool) -> None:
    client = _FakeClient(token_ids)
    completion = TextCompletion(client, _FakeModel(), [7, 8], max_tokens, stop)  # type: ignore[arg-type]
    assert "".join(completion.pieces()) == text
    assert (completion.finish_reason, completion.completion_tokens, completion.prompt_tokens) == (finish, used, 2)
    assert client.closed_early == closed_early


def test_openai_chat_template_formats_the_conversation() -> None:
    from pinfer.model.tokenizer import NoChatTemplateError, byte_level_tokenizer, encode_chat, encode_prompt

    tokenizer = byte_level_tokenizer()
    with pytest.raises(NoChatTemplateError):
        encode_chat(tokenizer, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert encode_chat(tokenizer, [{"role": "user", "content": "u"}]) == encode_prompt(tokenizer, "u", raw=True)
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    ids = encode_chat(tokenizer, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert tokenizer.decode(ids) == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
    assert encode_prompt(tokenizer, "u", raw=False) == encode_chat(tokenizer, [{"role": "user", "content": "u"}])
