"""Do the fast serving path's answers equal the reference's? A trained model's index answered twice on the
same questions, interleaved: by the PyTorch fp32 serving copy (the reference) and by llama.cpp with the
merged decoder's 8-bit GGUF (what a CPU serves with when llama-cpp-python is installed).

    .venv/bin/clara-lite demo && .venv/bin/python benchmarks/serving_fidelity.py --run-dir runs/demo

The index holds every candidate document of the run's held-out questions (data/heldout.jsonl, never
trained on); both paths retrieve the same chunks (the model's query reasoner, or MiniLM), so only
decoding differs. Printed: EM / cover-EM / F1 of each, the paired-bootstrap 95% interval of each
difference (fast - reference), how many answers are identical, and median seconds per question.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/demo", help="a trained run (its last stage's final model)")
    p.add_argument("--heldout", default=None, help="held-out JSONL (default: RUN/data/heldout.jsonl)")
    p.add_argument("--model", default=None, help="a model folder or checkpoint (default: RUN's last final model)")
    p.add_argument("--limit", type=int, default=0, help="the first N held-out questions (0: all)")
    p.add_argument("--k", type=int, default=None, help="chunks per question (default: the model's top-k)")
    p.add_argument("--new-tokens", type=int, default=8, help="as the demo's held-out scoring")
    p.add_argument("--index-dir", default=None, help="where the index is built (default: RUN/bench/fidelity-index)")
    args = p.parse_args(argv)

    import torch

    from clara_lite.core.layout import RunLayout
    from clara_lite.model.data import read_jsonl
    from clara_lite.model.evaluation import cover_exact_match, exact_match, f1_score, paired_bootstrap
    from clara_lite.model.modeling import ClaraModel
    from clara_lite.model.stages import ORDER, get_stage
    from clara_lite.serve import llama_cpp
    from clara_lite.serve.index import ClaraIndex

    if not llama_cpp.available():
        print("llama-cpp-python is not installed (make fast-cpu): nothing to compare")
        return 1
    run = Path(args.run_dir)
    layout = RunLayout(run)
    if args.model:
        model = ClaraModel.from_pretrained(args.model)
    else:
        model = ClaraModel.from_pretrained(layout.final(next(s for s in reversed(ORDER) if layout.final(s).is_dir())))
    held = read_jsonl(Path(args.heldout or run / "data" / "heldout.jsonl"), get_stage("stage3"))[: args.limit or None]
    docs = list(dict.fromkeys(d for row in held for d in row.docs))
    folder = Path(args.index_dir or run / "bench" / "fidelity-index")
    if not (folder / "manifest.json").is_file():
        ClaraIndex.build(folder, model, docs, keys="auto", progress=False)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}")
    paths = {"reference": ClaraIndex.load(folder, model, backend="torch-fp32"),
             "fast": ClaraIndex.load(folder, model, backend="llama.cpp")}
    for name, index in paths.items():
        index.ask(held[0].question, args.k, max_new_tokens=args.new_tokens)  # warm-up: the serving copy, the file
        print(f"{name}: {index.decoder.how}")
    answers = {n: [] for n in paths}
    seconds = {n: [] for n in paths}
    hits_same = 0
    for i, row in enumerate(held):
        got = {}
        for name in (list(paths) if i % 2 == 0 else list(paths)[::-1]):
            t0 = time.perf_counter()
            got[name] = paths[name].ask(row.question, args.k, max_new_tokens=args.new_tokens)
            seconds[name].append(time.perf_counter() - t0)
        hits_same += [h.row for h in got["reference"].hits] == [h.row for h in got["fast"].hits]
        for name in paths:
            answers[name].append(got[name].text)
    golds = [row.answers for row in held]
    print(f"\n{len(held)} held-out questions of {args.heldout or run / 'data' / 'heldout.jsonl'}, "
          f"{len(docs)} documents in the index; the same chunks retrieved for {hits_same}/{len(held)}; "
          f"identical answers {sum(a == b for a, b in zip(*answers.values(), strict=True))}/{len(held)}")
    print("| metric | reference (PyTorch fp32) | fast (llama.cpp q8_0) | fast - reference, 95% interval |\n|---|---|---|---|")
    for metric, fn in (("EM", exact_match), ("cover-EM", cover_exact_match), ("F1", f1_score)):
        ref = [fn(a, g) for a, g in zip(answers["reference"], golds, strict=True)]
        fast = [fn(a, g) for a, g in zip(answers["fast"], golds, strict=True)]
        diff, lo, hi = paired_bootstrap(ref, fast)
        print(f"| {metric} | {statistics.mean(ref):.3f} | {statistics.mean(fast):.3f} | {diff:+.3f} "
              f"({lo:+.3f}..{hi:+.3f}) |")
    print(f"median seconds per question: reference {statistics.median(seconds['reference']):.3f}, "
          f"fast {statistics.median(seconds['fast']):.3f}")
    differ = [(row.question, a, b) for row, a, b in zip(held, *answers.values(), strict=True) if a != b][:5]
    for q, a, b in differ:
        print(f"  differs: {q!r}: reference {a!r}, fast {b!r}")
    print(json.dumps({"load_end": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
