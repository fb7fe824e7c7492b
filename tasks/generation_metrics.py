"""Per-sample metrics for generation tasks (lm-eval `process_results` hooks)."""

from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE-L F1 of the generated response against the reference output."""
    return {"rougeL": _SCORER.score(doc["output"].strip(), results[0].strip())["rougeL"].fmeasure}


def rouge_l_chosen(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE-L F1 of the generated reply against the preferred (chosen) reply of a preference pair."""
    return {"rougeL": _SCORER.score(doc["chosen"].strip(), results[0].strip())["rougeL"].fmeasure}
