"""Does the decoder use the memory? The teacher-forced answer loss (nats per answer token) on held-out
questions with the question's own compressed document, another document's, and zeros. More sensitive than
EM/F1: a memory that helps a little lowers the first below the other two long before greedy answers change.

    .venv/bin/python benchmarks/memory_probe.py --run-dir runs/real-text --stage stage2 --limit 96

Reads ``<run-dir>/data/heldout.jsonl`` (written by real_text.py) and ``<run-dir>/<stage>/final``
(or ``--model`` for any model folder). Results: benchmarks/README.md, "real_text.py".
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--stage", default="stage2", help="whose final model (ignored with --model)")
    p.add_argument("--model", help="a model folder (default: <run-dir>/<stage>/final)")
    p.add_argument("--data", help="QA rows (default: <run-dir>/data/heldout.jsonl)")
    p.add_argument("--limit", type=int, default=96, help="the first N questions")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()

    import torch

    from clara_lite.model.data import read_jsonl
    from clara_lite.model.modeling import ClaraModel
    from clara_lite.model.stages import ORDER, get_stage

    run = Path(args.run_dir)
    model = ClaraModel.from_pretrained(args.model or run / args.stage / "final")
    model.eval()
    reader = get_stage(ORDER[1])  # question + its documents: the instruction-tuning rows
    rows = read_jsonl(args.data or run / "data" / "heldout.jsonl", reader)[: args.limit]
    collate = reader.collator(model)
    totals = {"own document": 0.0, "another document": 0.0, "zeroed": 0.0}
    count = 0
    with torch.no_grad():
        for start in range(0, len(rows), args.batch_size):
            batch_rows = rows[start : start + args.batch_size]
            if len(batch_rows) < 2:  # "another document" needs a second row in the batch
                continue
            batch = collate(batch_rows)
            memory, _ = model.compress(batch["enc"])
            k = memory.shape[0] // len(batch_rows)
            variants = {"own document": memory, "another document": memory.roll(k, 0),
                        "zeroed": torch.zeros_like(memory)}
            for name, mem in variants.items():
                for i in range(len(batch_rows)):
                    embeds = model.decoder_embeds(batch["dec"]["input_ids"][i : i + 1], mem[i * k : (i + 1) * k])
                    totals[name] += model.decoder_loss(embeds, batch["dec"]["attention_mask"][i : i + 1],
                                                       batch["dec"]["labels"][i : i + 1]).item()
            count += len(batch_rows)
    if not count:
        raise SystemExit("no batch of two or more questions to compare")
    print(f"answer loss (nats per token) over {count} questions:")
    for name, total in totals.items():
        print(f"  {name:<17} {total / count:.3f}")


if __name__ == "__main__":
    main()
