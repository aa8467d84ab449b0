"""Builders for the pipeline tests: real documents of every type, and a loopback chat endpoint.

The endpoint (``FakeLLM``) is an ``http.server`` on 127.0.0.1 answering ``/chat/completions``
like an OpenAI-compatible API, deterministically from the prompt: a summary made of the text's
first words, and questions about words of the text. It can check the API key, answer slowly,
or answer with given error statuses first. Images are checked as a real vision endpoint does:
anything but a decodable PNG/JPEG under its declared type and within 2048 px a side gets HTTP 400.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOPICS = {
    "volcanoes": ("Mount Etna is an active stratovolcano on the east coast of Sicily. It is the tallest active volcano "
                  "in Europe outside the Caucasus, about 3,357 metres high. Its eruptions have been recorded since "
                  "425 BC, and the Greek myth placed the forge of Hephaestus beneath it."),
    "bees": ("Honey bees communicate the location of flowers with the waggle dance. Karl von Frisch decoded the dance "
             "and received the Nobel Prize in 1973. A colony has one queen, thousands of female workers and a few "
             "hundred male drones in summer."),
    "telescope": ("The James Webb Space Telescope launched on 25 December 2021 on an Ariane 5 rocket. Its primary "
                  "mirror is 6.5 metres wide and made of 18 gold-coated beryllium segments. It orbits near the second "
                  "Lagrange point, 1.5 million kilometres from Earth."),
    "coffee": ("Coffee plants originated in Ethiopia, where legend credits a goat herder named Kaldi with noticing "
               "their effect. Arabica and robusta are the two main species. Brazil has been the largest producer "
               "for more than a century."),
    "bridges": ("The Golden Gate Bridge opened in 1937 and spans 1,280 metres between its towers. Its colour, "
                "international orange, was chosen by architect Irving Morrow. Joseph Strauss was the chief engineer."),
    "chess": ("Chess reached Europe through Persia and the Arab world. The modern queen move appeared in Spain around "
              "1475. Wilhelm Steinitz became the first official world champion in 1886."),
    "rivers": ("The Danube flows through ten countries, more than any other river. It rises in the Black Forest of "
               "Germany and empties into the Black Sea through a delta in Romania and Ukraine."),
    "glass": ("Glass is made mostly from silica sand, soda ash and limestone melted at about 1,700 degrees Celsius. "
              "The float glass process was invented by Alastair Pilkington in the 1950s."),
}


def png_bytes(color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _pdf(path: Path, pages: list[str], image: Path | None = None, password: str | None = None) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(path.stem.replace("_", " ").title())
    pdf.set_font("helvetica", size=11)
    for n, text in enumerate(pages):
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
        if image is not None and n == 1:
            pdf.image(str(image), w=20)
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    pdf.output(str(path))
    return path


def make_documents(folder: Path) -> Path:
    """A folder with a 3-page PDF (image on page 2), DOCX, PPTX, HTML, Markdown (+ a PNG beside it),
    a corrupt PDF, a password-protected PDF and a file of an unsupported type."""
    import docx
    from pptx import Presentation
    from pptx.util import Inches

    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "figure.png"
    image.write_bytes(png_bytes())
    _pdf(folder / "science_notes.pdf", [TOPICS["volcanoes"], TOPICS["bees"], TOPICS["telescope"]], image)

    document = docx.Document()
    document.add_heading("Coffee history", level=1)
    for n, sentence in enumerate(re.split(r"(?<=\.)\s+", TOPICS["coffee"])):
        document.add_paragraph(sentence)
        if n == 0:  # a picture between the first and second paragraph
            document.add_picture(io.BytesIO(png_bytes((20, 120, 40))))
    document.save(str(folder / "coffee.docx"))

    deck = Presentation()
    for title, key in (("Bridges", "bridges"), ("Chess", "chess")):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = TOPICS[key]
    deck.slides[0].shapes.add_picture(io.BytesIO(png_bytes((0, 0, 200))), Inches(1), Inches(1))
    deck.save(str(folder / "lectures.pptx"))

    (folder / "rivers.html").write_text(
        f"<html><head><title>Rivers of Europe</title><style>p {{color: red}}</style></head><body>"
        f"<h1>The Danube</h1><p>{TOPICS['rivers']}</p><img src='figure.png' alt='map'>"
        f"<script>var x = 'not text';</script></body></html>", encoding="utf-8")
    (folder / "glass.md").write_text(f"# Making glass\n\n{TOPICS['glass']}\n\n![furnace](figure.png)\n",
                                     encoding="utf-8")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage without xref\n")
    _pdf(folder / "secret.pdf", ["Confidential numbers."], password="hunter2")
    (folder / "data.xyz").write_text("not a document")
    return folder


# --------------------------------------------------------------------------- loopback endpoint


VISION_MAX_SIDE = 2048


def describe(data_url: str) -> tuple[int, str]:
    """(status, reply) of a vision endpoint for an image sent as a data URL."""
    from PIL import Image

    header, _, payload = data_url.partition(",")
    mime = header.removeprefix("data:").removesuffix(";base64")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload)))
        image.load()
    except Exception:
        return 400, "Invalid image: could not decode the image data"
    if {"PNG": "image/png", "JPEG": "image/jpeg"}.get(image.format) != mime:
        return 400, f"Invalid image: {image.format} data sent as {mime}"
    if max(image.size) > VISION_MAX_SIDE:
        return 400, f"Invalid image: {image.size[0]}x{image.size[1]} is over {VISION_MAX_SIDE} pixels a side"
    red, green, blue = image.convert("RGB").resize((1, 1)).getpixel((0, 0))
    return 200, f"A {image.size[0]}x{image.size[1]} picture, mostly rgb({red}, {green}, {blue})."


def _text_of(prompt: str) -> str:
    return prompt.split("Text:\n", 1)[-1]


def canned_reply(prompt: str) -> str:
    """What the fake model says: deterministic, derived from the text in the prompt."""
    text = _text_of(prompt)
    words = re.findall(r"[A-Za-z][A-Za-z\-]{3,}", text)
    if prompt.startswith("Summarize"):
        return "Summary: " + " ".join(text.split()[:16])
    n = int(re.search(r"Write (\d+) questions", prompt).group(1))
    picked = list(dict.fromkeys([w for w in words if w[0].isupper()] + words))[:n]  # names first
    sentences = re.split(r"(?<=[.!?])\s+", text)
    pairs = [{"question": f"What does the text say about {w}?",
              "answer": next(s for s in sentences if w in s)[:60]} for w in picked]
    if "Q: <question>" in prompt:
        return "\n".join(f"Q: {p['question']}\nA: {p['answer']}" for p in pairs)
    return "Here are the pairs:\n```json\n" + json.dumps(pairs) + "\n```"


class FakeLLM:
    """A chat-completions server on 127.0.0.1:0, in a thread; use as a context manager."""

    def __init__(self, *, key: str | None = None, delay: float = 0.0, errors: list[tuple[int, dict]] | None = None,
                 reply=canned_reply):
        self.key, self.delay, self.errors, self.reply = key, delay, list(errors or []), reply
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):  # GET /v1/models: what the server serves (Ollama, vLLM list theirs)
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": None, "auth": self.headers.get("Authorization")})
                if outer.key is not None and self.headers.get("Authorization") != f"Bearer {outer.key}":
                    return self._send(401, {"error": {"message": "bad key"}})
                if not self.path.endswith("/models"):
                    return self._send(404, {"error": {"message": "not found"}})
                self._send(200, {"object": "list", "data": [{"id": "served-instruct", "object": "model"},
                                                            {"id": "other", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    error = outer.errors.pop(0) if outer.errors else None
                if outer.key is not None and self.headers.get("Authorization") != f"Bearer {outer.key}":
                    return self._send(401, {"error": {"message": f"bad key {self.headers.get('Authorization')}"}})
                if error is not None:
                    return self._send(error[0], {"error": {"message": "try later"}}, error[1])
                time.sleep(outer.delay)
                content = body["messages"][-1]["content"]
                if isinstance(content, str):
                    answer = outer.reply(content)
                else:  # text + image parts
                    status, answer = describe(content[1]["image_url"]["url"])
                    if status != 200:
                        return self._send(status, {"error": {"message": answer, "type": "invalid_request_error"}})
                words = sum(len(str(m["content"]).split()) for m in body["messages"])  # its "tokens"
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": answer}}],
                                 "usage": {"prompt_tokens": words, "completion_tokens": len(answer.split())}})

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_fake_llm_answers_like_an_openai_endpoint():
    import urllib.request

    with FakeLLM() as llm:
        prompt = "Write 2 questions that the text below answers. JSON.\n\nText:\nMount Etna is in Sicily. Karl Frisch."
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()
        request = urllib.request.Request(llm.url + "/chat/completions", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            reply = json.loads(response.read())["choices"][0]["message"]["content"]
    assert "What does the text say about Mount?" in reply and len(llm.requests) == 1
