"""How many question/answer pairs the local generator writes per passage, on real text.

`data build` without an endpoint writes its questions with a local model (SmolLM2-135M offline). This
runs the synthesis step exactly as `data build` does (same prompts, same parsing) on the first N documents
of the shared upstream rows (Wikipedia-style passages of ~110 words) and prints pairs per passage: those the
model wrote whose answer is in the text, and the cloze pairs synthesis fills up with for a small model.

    .venv/bin/python benchmarks/local_qa.py --docs 12            # SmolLM2-135M, ~10 s per passage here
    .venv/bin/python benchmarks/local_qa.py --docs 4 --show      # also print each raw reply
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from clara_lite.pipeline.generators import LocalModel
from clara_lite.pipeline.records import Chunk
from clara_lite.pipeline.synthesize import SynthesisConfig, synthesize_chunk

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "upstream_pretrain_data.jsonl"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--docs", type=int, default=12)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--show", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"{args.data} is missing (the project's shared/ folder)", file=sys.stderr)
        return 2
    docs = [json.loads(line)["docs"][0] for line in open(args.data, encoding="utf-8")][: args.docs]
    generator = LocalModel(args.model)
    config = SynthesisConfig(summary=False)  # the QA call only: the summary is another prompt
    written, cloze, dropped, seconds = [], [], 0, []
    for i, text in enumerate(docs):
        chunk = Chunk(id=f"doc-{i}", source="shared", page=None, title="", index=i, text=text)
        start = time.perf_counter()
        row = synthesize_chunk(chunk, generator, config)
        seconds.append(time.perf_counter() - start)
        written.append(len(row["qa"]) - row.get("cloze", 0))
        cloze.append(row.get("cloze", 0))
        dropped += row["dropped"]
        if args.show:
            print(json.dumps(row["qa"], ensure_ascii=False, indent=1))
    total = [w + c for w, c in zip(written, cloze, strict=True)]
    print(f"{args.model}: {len(docs)} passages; pairs per passage {statistics.mean(total):.2f} (the model's own, "
          f"answer in the text: {statistics.mean(written):.2f}; cloze: {statistics.mean(cloze):.2f}); passages "
          f"with none {sum(t == 0 for t in total)}; dropped {dropped}; {statistics.median(seconds):.1f} s per "
          "passage (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
