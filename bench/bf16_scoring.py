"""Would bf16 autocast score the same? The quickstart's test examples (SST-2, `eval.limit` of
experiment=quickstart, SmolLM2-135M), zero-shot and 4-shot (one balanced draw), each pass run in
fp32 (the default) and in bf16 autocast (lm-eval's `mixed_precision_dtype`) by the same
prefix-cached scorer, alternating, best of two: how many answers change, the largest change of a
log-likelihood, and the seconds of each. A check that reads test examples only to compare two
numerics of the same choice-free pass; nothing is chosen from it.

    python bench/bf16_scoring.py      # about 4 min on 2 cores
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sweep.config import compose_config  # noqa: E402
from sweep.pipeline.build import load_project_tasks  # noqa: E402
from sweep.scoring.evaluate import make_lm  # noqa: E402
from sweep.scoring.fewshot import FixedDraw, draw  # noqa: E402
from sweep.training.models import load_model_and_tokenizer  # noqa: E402

log = logging.getLogger("bf16_scoring")
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def choices(scored: list[tuple[float, bool]], per_doc: int) -> list[int]:
    """Each example's answer: the choice of highest log-likelihood among its `per_doc` requests."""
    return [max(range(per_doc), key=lambda j: scored[start + j][0]) for start in range(0, len(scored), per_doc)]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = compose_config(["experiment=quickstart", "method=few_shot"])
    model, tok = load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=cfg.seed)
    model.eval()
    _, tasks = load_project_tasks(cfg)
    task = tasks["sst2"]
    docs = list(task.eval_docs)[:cfg.eval.limit]
    pool = list(task.dataset["train"].select(range(300)))
    for k in (0, cfg.eval.num_fewshot):
        task.sampler = FixedDraw(draw("balanced", pool, k, task.doc_to_target, cfg.seed)) if k else None
        requests = [r for doc in docs for r in task.construct_requests(doc, task.fewshot_context(doc, k),
                                                                       metadata=("sst2", 0, 1))]
        per_doc = len(requests) // len(docs)
        lm = make_lm(model, tok, batch_size=cfg.eval.batch_size)
        answers, seconds = {}, {name: [] for name in DTYPES}
        for _ in range(2):
            for name, dtype in DTYPES.items():
                lm.mixed_precision_dtype = dtype
                start = time.perf_counter()
                answers[name] = lm.loglikelihood(requests, disable_tqdm=True)
                seconds[name].append(time.perf_counter() - start)

        changed = sum(a != b for a, b in zip(choices(answers["float32"], per_doc), choices(answers["bfloat16"], per_doc),
                                             strict=True))
        largest = max(abs(a[0] - b[0]) for a, b in zip(answers["float32"], answers["bfloat16"], strict=True))
        fp32, bf16 = min(seconds["float32"]), min(seconds["bfloat16"])
        log.info("%d-shot, %d examples: fp32 %.1f s, bf16 %.1f s (%.2fx); %d answers change; largest "
                 "log-likelihood change %.3f", k, len(docs), fp32, bf16, fp32 / bf16, changed, largest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
