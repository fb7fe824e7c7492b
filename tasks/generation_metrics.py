"""Per-sample metrics and references for generation tasks (lm-eval `process_results` and
`doc_to_target` hooks).

The references are functions, not templates: lm-eval parses a rendered template target that looks
like a list (`[-4, 2, 5]`, `["a","b"]`) with `ast.literal_eval`, so training would learn the
list's Python repr instead of the text in the file. A function's string is used as it is."""

from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def output_text(doc: dict) -> str:
    """The reference output, exactly as written (Self-Instruct tasks)."""
    return doc["output"].strip()


def chosen_text(doc: dict) -> str:
    """The preferred reply of a preference pair, exactly as written."""
    return doc["chosen"].strip()


def rouge_l(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE-L F1 of the generated response against the reference output."""
    return {"rougeL": _SCORER.score(output_text(doc), results[0].strip())["rougeL"].fmeasure}


def rouge_l_chosen(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE-L F1 of the generated reply against the preferred (chosen) reply of a preference pair."""
    return {"rougeL": _SCORER.score(chosen_text(doc), results[0].strip())["rougeL"].fmeasure}
