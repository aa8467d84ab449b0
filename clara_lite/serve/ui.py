"""A chat page over an index (Gradio >= 5): ``clara-lite serve --ui`` mounts it at ``/ui`` on the API's own
app, and 05_inference's ``Workspace.chat_page`` shows it inline in the notebook.

The answer streams in token by token (``ClaraIndex.ask(..., on_token=...)``) and its sources are listed under
it (file, page, span, score and the passage the decoder read). The conversation is kept: the earlier user
turns are folded into the retrieval query exactly as ``/v1/chat/completions`` does
(:func:`~.openai_api.conversation`), so a follow-up retrieves the documents of the conversation; the question
the decoder answers is the last one. Answers are decoded one at a time (the server's lock when mounted).

With an API key (``clara-lite serve`` beyond loopback), a browser cannot send ``Authorization: Bearer``: the
page asks for the key instead (Gradio's login form; the key is the password, any user name; compared in
constant time), and every other route still wants the Bearer header.
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading

from .decoding import TextStream
from .openai_api import RequestError, conversation

log = logging.getLogger(__name__)

UI_PATH = "/ui"
TITLE = "clara_lite: ask the documents"
SHARE_WARNING = ("WARNING: share=True makes a public gradio.live link: anyone who has it can ask this index and "
                 "read its documents, with no key, for as long as this runtime runs (up to a week)")
SOURCES_ID = "clara-sources"


def format_sources(hits, width: int = 400) -> str:
    """The sources of an answer as Markdown: one item per retrieved chunk, best first."""
    if not hits:
        return "_no sources_"
    lines = ["**Sources**", ""]
    for rank, hit in enumerate(hits, start=1):
        c = hit.chunk
        page = f", page {c.page}" if c.page is not None else ""
        passage = " ".join(c.text.split())
        passage = passage if len(passage) <= width else passage[:width] + "…"
        lines.append(f"{rank}. `{c.source}`{page}, characters {c.start}–{c.end} (score {hit.score:.3f})")
        lines.append(f"    > {_escape(passage)}")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\`*_{}[]<>()#+-!|~" else ch for ch in text)


def _messages(history, message: str) -> list[dict]:
    """Gradio's chat history (message dicts) and the new message as OpenAI-style messages."""
    out = []
    for turn in history or []:
        role, content = (turn.get("role"), turn.get("content")) if isinstance(turn, dict) else (None, None)
        if role in ("user", "assistant"):
            out.append({"role": role, "content": _plain(content)})
    return out + [{"role": "user", "content": message}]


def _plain(content) -> str:
    """A message's text: gradio 6 hands it back as a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    return "".join(_plain(part) for part in content if isinstance(part, (str, dict)))


def chat_page(index, *, run=None, default_k: int | None = None, max_new_tokens: int = 64, title: str = TITLE):
    """A ``gradio.Blocks`` chat over ``index``. ``run(work)`` calls ``work()`` with the model to itself (the
    server's lock; default: a lock of this page's own)."""
    import gradio as gr

    if run is None:
        lock = threading.Lock()

        def run(work):
            with lock:
                return work()

    def respond(message: str, history: list):
        message = (message or "").strip()
        if not message:
            yield history, "", gr.skip()
            return
        try:
            question, query = conversation(_messages(history, message))
        except RequestError as err:
            raise gr.Error(err.message) from None
        history = list(history or []) + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield history, "", "_retrieving and reading…_"
        events: queue.Queue = queue.Queue()

        def work():
            try:
                answer = run(lambda: index.ask(question, default_k, max_new_tokens=max_new_tokens, query=query,
                                               on_token=lambda t: events.put(("token", t))))
                events.put(("done", answer))
            except BaseException as err:  # noqa: BLE001 - shown on the page
                events.put(("error", err))

        threading.Thread(target=work, name="clara-ui", daemon=True).start()
        text, shown = TextStream(index.model.tokenizer), ""
        while True:
            kind, value = events.get()
            if kind == "token":
                piece = text.push(value)
                if piece:
                    shown += piece
                    history[-1] = {"role": "assistant", "content": shown}
                    yield history, "", gr.skip()
            elif kind == "done":
                shown += text.finish(value.text)
                history[-1] = {"role": "assistant", "content": value.text}
                yield history, "", format_sources(value.hits)
                return
            else:
                log.error("the chat page's answer failed: %s: %s", type(value).__name__, value)
                raise gr.Error(f"the answer failed ({type(value).__name__}); see the log")

    chatbot_options = {"type": "messages"} if "type" in _parameters(gr.Chatbot) else {}  # gradio 5 (6: always)
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"### {title}\n{len(index.chunks)} chunks; the earlier questions of the conversation help "
                    "find the documents of a follow-up.")
        chatbot = gr.Chatbot(label="conversation", elem_id="clara-chat", render_markdown=False, height=360,
                             **chatbot_options)
        box = gr.Textbox(label="question", placeholder="Ask the documents…", elem_id="clara-question",
                         autofocus=True, submit_btn=True)
        sources = gr.Markdown(elem_id=SOURCES_ID)
        box.submit(respond, [box, chatbot], [chatbot, box, sources])
        gr.ClearButton([chatbot, box, sources], value="new conversation")
    return page


def _parameters(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def key_login(api_key: str):
    """Gradio's ``auth``: any user name, the API key as the password (constant-time comparison)."""
    expected = api_key.encode()

    def check(_username: str, password: str) -> bool:
        return hmac.compare_digest((password or "").encode(), expected)

    return check


def mount_chat_page(app, index, *, run=None, default_k: int | None = None, max_new_tokens: int = 64,
                    api_key: str | None = None, path: str = UI_PATH):
    """Mount the chat page on the FastAPI ``app`` at ``path`` (behind the key's login form when ``api_key``)."""
    import gradio as gr

    page = chat_page(index, run=run, default_k=default_k, max_new_tokens=max_new_tokens)
    page.queue(default_concurrency_limit=1)
    options = {"auth": key_login(api_key), "auth_message": "the server's API key is the password"} if api_key else {}
    return gr.mount_gradio_app(app, page, path=path, **options)


def launch_inline(index, *, share: bool = False, default_k: int | None = None, max_new_tokens: int = 64):
    """The chat page shown inline in a notebook (Colab too); a public link only with ``share=True``."""
    if share:
        print(SHARE_WARNING)
        log.warning(SHARE_WARNING)
    page = chat_page(index, default_k=default_k, max_new_tokens=max_new_tokens)
    page.queue(default_concurrency_limit=1)
    page.launch(inline=True, share=share, prevent_thread_lock=True, quiet=True)
    return page
