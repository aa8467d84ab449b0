"""The OpenAI-compatible routes, through the official ``openai`` client against a live server on 127.0.0.1:
the same answers and sources as ``ClaraIndex.ask``, streamed token by token with the sources in the last
chunk, the conversation folded into the retrieval query, and OpenAI's error shape."""

from __future__ import annotations

import httpx
import openai
import pytest
from test_index import QUESTIONS, corpus, served_model
from test_index_serving import running

from clara_lite.serve.index import ClaraIndex
from clara_lite.serve.openai_api import MODEL_NAME, conversation
from clara_lite.serve.server import create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(index, base URL) of a server over a 10-document index, for the whole module."""
    index = ClaraIndex.build(tmp_path_factory.mktemp("openai") / "kb", served_model(), corpus(10), keys=(),
                             progress=False)
    with running(create_app(index, max_new_tokens=8)) as base:
        yield index, base


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="not-checked-on-loopback", max_retries=0, timeout=60)


def test_the_openai_client_lists_the_model_and_gets_the_index_answer_with_its_sources(served):
    index, base = served
    api = client(base)
    assert [m.id for m in api.models.list()] == [MODEL_NAME]
    assert api.models.retrieve(MODEL_NAME).id == MODEL_NAME
    done = api.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                       max_tokens=6, temperature=0.7, extra_body={"k": 3})
    expected = index.ask(QUESTIONS[0], 3, max_new_tokens=6)
    assert done.object == "chat.completion" and done.model == MODEL_NAME and done.id.startswith("chatcmpl-")
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == ("stop" if expected.stopped else "length")
    assert done.usage.completion_tokens == expected.new_tokens == 6
    assert done.usage.total_tokens == expected.prompt_tokens + 6
    assert done.sources == [h.to_dict() for h in expected.hits]  # file (source), page, span, score, text
    assert {"source", "page", "start", "end", "score"} <= set(done.sources[0])


def test_a_stream_sends_the_same_answer_token_by_token_and_the_sources_last(served):
    index, base = served
    stream = client(base).chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": QUESTIONS[1]}], max_tokens=8, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    expected = index.ask(QUESTIONS[1], max_new_tokens=8)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in with_choices if c.choices[0].delta.content]
    assert "".join(pieces) == expected.text
    assert len(pieces) >= 4  # one event per decoded token (tiny-random's tokens are mostly whole words)
    last = with_choices[-1]
    assert last.choices[0].finish_reason == ("stop" if expected.stopped else "length")
    assert last.sources == [h.to_dict() for h in expected.hits]
    assert all(getattr(c, "sources", None) is None for c in with_choices[:-1])
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == expected.new_tokens
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)

    with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=60, json={
            "model": MODEL_NAME, "messages": [{"role": "user", "content": QUESTIONS[1]}], "max_tokens": 3,
            "stream": True}) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_earlier_turns_are_folded_into_the_retrieval_query_and_the_last_user_message_is_answered(served):
    index, base = served
    messages = [{"role": "system", "content": "You are NutriBot."}, {"role": "user", "content": QUESTIONS[0]},
                {"role": "assistant", "content": "In Paris."},
                {"role": "user", "content": [{"type": "text", "text": QUESTIONS[2]}]}]
    question, query = conversation(messages)
    assert (question, query) == (QUESTIONS[2], f"{QUESTIONS[0]}\n{QUESTIONS[2]}")
    done = client(base).chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=5)
    expected = index.ask(QUESTIONS[2], max_new_tokens=5, query=query)
    assert done.choices[0].message.content == expected.text
    assert [s["id"] for s in done.sources] == [h.chunk.id for h in index.search(query)]
    many = [{"role": "user", "content": f"turn {i}"} for i in range(5)] + [{"role": "user", "content": "last"}]
    assert conversation(many)[1] == "turn 3\nturn 4\nlast"  # two earlier user turns at most


def test_refusals_have_openais_error_shape(served):
    _, base = served
    api = client(base)
    user = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.NotFoundError) as err:
        api.chat.completions.create(model="gpt-4o", messages=user)
    assert err.value.code == "model_not_found" and "clara-lite" in err.value.message
    refused = {
        "assistant last": dict(messages=user + [{"role": "assistant", "content": "y"}]),
        "n above 1": dict(messages=user, n=2),
        "too many tokens": dict(messages=user, max_tokens=10**6),
        "an image": dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        "blank question": dict(messages=[{"role": "user", "content": "  "}]),
        "long question": dict(messages=[{"role": "user", "content": "x" * 4001}]),
    }
    for what, kwargs in refused.items():
        with pytest.raises(openai.BadRequestError) as err:
            api.chat.completions.create(model=MODEL_NAME, **kwargs)
        body = err.value.body
        assert body["type"] == "invalid_request_error" and body["message"], what
    with httpx.Client(base_url=base, timeout=60) as http:
        for response in (http.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}),
                         http.post("/v1/chat/completions", content=b"x" * (70 << 10)),
                         http.get("/v1/nothing"), http.get("/v1/chat/completions")):
            assert response.status_code in (400, 404, 405, 413), response.status_code
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert http.post("/ask", json={"question": ""}).json()["error"] == "invalid request"  # /ask keeps its shape
