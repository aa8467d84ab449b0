"""Load times of the embedded default model: first (GGUF conversion, unless cached) and second load.

    python benchmarks/load_model.py [--name smollm2-135m] [--fresh-cache]

Target (issue 2): the second load takes < 3 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", default="smollm2-135m")
    p.add_argument("--fresh-cache", action="store_true", help="convert again into a temporary cache")
    args = p.parse_args()
    if args.fresh_cache:
        os.environ["CLARA_LITE_CACHE"] = tempfile.mkdtemp(prefix="clara-cache-")
    from clara_lite.model.base import load_base_model

    for attempt in ("first", "second"):
        t = time.perf_counter()
        load_base_model(args.name)
        print(f"{args.name} {attempt} load: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
