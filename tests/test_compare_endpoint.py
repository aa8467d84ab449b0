"""``text-rag-endpoint``: the user's own chat model behind an OpenAI-compatible server, answering from text-rag's
documents with text-rag's prompt (issue 26, item 6). The server is a real HTTP server on 127.0.0.1 whose answer is
the last word of the first document it was sent, so a right answer proves the documents arrived."""

from __future__ import annotations

import json
import logging
import socket

import pytest
from helpers import tiny_model
from test_pipeline_support import FakeLLM

from clara_lite.cli import main
from clara_lite.model import inputs
from clara_lite.model.data import read_jsonl
from clara_lite.pipeline.questions import pool_retriever
from clara_lite.serve.compare import TEXT_RAG, TEXT_RAG_ENDPOINT, compare
from clara_lite.serve.endpoint import ENV_KEY, EndpointError, endpoint_answers, open_endpoint

CONFIG = dict(doc_max_length=16, compr_rate=4, generation_top_k=2, lora_r=4)
KEY = "sk-endpoint-7e3f1a-NEVER-SHOWN"
SERVED = "served-instruct"  # what FakeLLM's GET /v1/models lists first


def first_document_word(prompt: str) -> str:
    """The fake model: the last word of the first document of text-rag's prompt ("Ada lives in Paris." -> Paris)."""
    background = prompt.split("Background:\n", 1)[1].split("\n\nQuestion:", 1)[0]
    return background.splitlines()[0].rstrip(".").split()[-1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "model"
    tiny_model(**CONFIG).save_pretrained(folder)
    return folder


def test_the_endpoint_reads_text_rags_documents_and_its_answers_are_scored(saved, data_dir, tmp_path, monkeypatch,
                                                                          capsys, caplog):
    monkeypatch.setenv(ENV_KEY, KEY)
    out = tmp_path / "report"
    with FakeLLM(key=KEY, reply=first_document_word) as llm, caplog.at_level(logging.DEBUG):
        assert main(["eval", "--model", str(saved), "--data", str(data_dir / "stage2.jsonl"), "--systems",
                     f"text-rag,{TEXT_RAG_ENDPOINT}", "--endpoint", llm.url, "--endpoint-model", SERVED,
                     "--report-dir", str(out), "--max-new-tokens", "3"]) == 0
    printed = capsys.readouterr()
    report = json.loads((out / "comparison.json").read_text())
    assert report["endpoint"] == {"url": llm.url, "model": SERVED}
    systems = {s["system"]: s for s in report["systems"]}
    assert list(systems) == [TEXT_RAG, TEXT_RAG_ENDPOINT]
    # gold documents first (oracle): the first document's last word is each question's answer
    assert systems[TEXT_RAG_ENDPOINT]["em"] == 1.0 and systems[TEXT_RAG_ENDPOINT]["count"] == 12
    answers = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(a[TEXT_RAG_ENDPOINT]["read"] == a[TEXT_RAG]["read"] for a in answers)
    chats = [r for r in llm.requests if r["body"] is not None]
    assert [r["path"] for r in llm.requests] == ["/v1/models"] + ["/v1/chat/completions"] * 12  # checked first
    for request, answer in zip(chats, answers, strict=True):  # text-rag's prompt, greedy, --max-new-tokens
        assert request["body"]["messages"] == inputs.text_answer_messages(answer["question"], answer[TEXT_RAG]["read"])
        assert request["body"]["model"] == SERVED and request["body"]["max_tokens"] == 3
        assert request["body"]["temperature"] == 0
    assert all(r["auth"] == f"Bearer {KEY}" for r in llm.requests)
    # the endpoint's own token counts (FakeLLM counts words), not the local tokenizer's
    words = [sum(len(m["content"].split()) for m in r["body"]["messages"]) for r in chats]
    assert systems[TEXT_RAG_ENDPOINT]["prompt_tokens"] == pytest.approx(sum(words) / len(words))
    table = (out / "comparison.md").read_text()
    assert f"| {TEXT_RAG_ENDPOINT} | 1.000 |" in table and f"{TEXT_RAG_ENDPOINT}: {SERVED} at {llm.url}" in table
    shown = printed.out + printed.err + caplog.text + "".join(p.read_text(errors="replace") for p in out.iterdir())
    assert KEY not in shown and KEY[4:-2] not in shown


def test_the_normal_setting_sends_the_endpoint_what_bm25_found_for_text_rag(data_dir):
    rows = read_jsonl(data_dir / "stage2.jsonl", "stage2")[:6]
    pool = list(dict.fromkeys(d for r in rows for d in r.docs))
    with FakeLLM(reply=first_document_word) as llm:
        endpoint = open_endpoint(llm.url, SERVED, environ={})
        result = compare(tiny_model(**CONFIG), rows, [TEXT_RAG, TEXT_RAG_ENDPOINT], setting="normal", top_k=2,
                         retriever=pool_retriever(pool), pool=pool, max_new_tokens=2, endpoint=endpoint)
    assert result.read[TEXT_RAG_ENDPOINT] == result.read[TEXT_RAG]
    assert result.scores[TEXT_RAG_ENDPOINT]["recall_at_k"] == result.scores[TEXT_RAG]["recall_at_k"] is not None
    assert all(r["auth"] is None for r in llm.requests)  # no key set: none sent
    with pytest.raises(ValueError, match="--endpoint URL"):
        compare(None, rows, [TEXT_RAG_ENDPOINT])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["no endpoint", "endpoint unused", "unreachable", "key refused", "unknown model"])
def test_endpoint_errors_name_the_url_and_what_to_do_before_the_model_loads(case, tmp_path, monkeypatch, caplog):
    wrong = "sk-wrong-0a9b8c7d6e"
    monkeypatch.setenv(ENV_KEY, wrong if case == "key refused" else KEY)
    port = _closed_port()
    with FakeLLM(key=KEY) as llm:
        url = f"http://127.0.0.1:{port}/v1" if case == "unreachable" else llm.url
        flags = {"no endpoint": ["--systems", TEXT_RAG_ENDPOINT],
                 "endpoint unused": ["--systems", TEXT_RAG, "--endpoint", url, "--endpoint-model", SERVED],
                 "unreachable": ["--systems", TEXT_RAG_ENDPOINT, "--endpoint", url, "--endpoint-model", SERVED],
                 "key refused": ["--systems", TEXT_RAG_ENDPOINT, "--endpoint", url, "--endpoint-model", SERVED],
                 "unknown model": ["--systems", TEXT_RAG_ENDPOINT, "--endpoint", url, "--endpoint-model", "nope"]}[case]
        missing = tmp_path / "no-model-here"  # never loaded: the endpoint is checked first
        assert main(["eval", "--model", str(missing), "--data", str(tmp_path / "q.jsonl"), *flags]) == 2
    error = caplog.text
    expected = {"no endpoint": ["--endpoint URL --endpoint-model NAME"],
                "endpoint unused": ["add it to --systems"],
                "unreachable": [url, "Is the server running"],
                "key refused": [url, "refused the key", ENV_KEY],
                "unknown model": [url, "'nope'", SERVED, "other", "--endpoint-model"]}[case]
    assert all(words in error for words in expected), error
    assert str(missing) not in error and wrong not in error and KEY not in error


def test_a_key_refused_mid_run_is_an_endpoint_error_without_the_key():
    wrong = "sk-wrong-0a9b8c7d6e"
    with FakeLLM() as llm:
        endpoint = open_endpoint(llm.url, SERVED, environ={ENV_KEY: wrong})
        llm.key = KEY  # the server starts asking for another key; its 401 body echoes the Authorization header
        with pytest.raises(EndpointError) as err:
            endpoint_answers(endpoint, ["Where does Ada live?"], [["Ada lives in Paris."]], max_new_tokens=2)
    assert err.value.code == "endpoint" and wrong not in str(err.value) and "***" in str(err.value)
    assert llm.requests[-1]["auth"] == f"Bearer {wrong}"
    with pytest.raises(ValueError, match=f"{ENV_KEY} holds a line break") as bad:  # named, never shown
        open_endpoint(llm.url, SERVED, environ={ENV_KEY: "sk-pasted\nsk-twice-123"})
    assert "sk-" not in str(bad.value)


def test_the_notebooks_compare_adds_the_endpoint_beside_the_other_systems(tmp_path, monkeypatch):
    from clara_lite import notebook as nb

    monkeypatch.setenv(ENV_KEY, KEY)
    drive = tmp_path / "drive"
    settings = nb.save_settings(drive, nb.Settings(run_name="cmp", base_model="tiny-random", compr_rate=4,
                                                   doc_max_length=16, lora_r=4))
    ws = nb.Workspace(drive, settings)
    ws.prepare_data("example")
    with FakeLLM(reply=first_document_word) as llm:
        result = ws.compare(tiny_model(**CONFIG), [TEXT_RAG], limit=4, max_new_tokens=2, endpoint=llm.url,
                            endpoint_model=SERVED)
        assert llm.requests and all(r["auth"] == f"Bearer {KEY}" for r in llm.requests)
    assert list(result.scores) == [TEXT_RAG, TEXT_RAG_ENDPOINT] and result.count == 4
    assert result.read[TEXT_RAG_ENDPOINT] == result.read[TEXT_RAG]
    report = (drive / "runs" / "cmp" / "benchmarks" / "heldout-oracle" / "comparison.json").read_text()
    assert SERVED in report and KEY not in report
