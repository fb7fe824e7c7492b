"""Retrieved demonstrations (eval.fewshot_sampler=retrieved): the nearest pool examples to each
scored one, labels balanced, nearest last, never one of the same source, never reading the scored
example's label; and what each example got is recorded with the run's scores."""

import json

import torch

from sweep.scoring.evaluate import Prompting, make_lm, score
from sweep.scoring.fewshot import RetrievedSampler, shares_source
from sweep.scoring.leakage import doc_text
from tests.conftest import ROOT, compose

POOL = [
    {"sentence": "a gorgeous , witty , seductive movie .", "label": 1, "idx": 0},
    {"sentence": "the acting is wooden and the plot is dull .", "label": 0, "idx": 1},
    {"sentence": "a witty and gorgeous film about love .", "label": 1, "idx": 2},
    {"sentence": "dull , wooden and far too long .", "label": 0, "idx": 3},
    {"sentence": "an utterly charming comedy .", "label": 1, "idx": 4},
    {"sentence": "the plot is dull", "label": 0, "idx": 5},  # a phrase of the query below: its source
    {"sentence": "a tedious mess .", "label": 0, "idx": 6},
]
QUERY = {"sentence": "sadly the plot is dull but the film is witty and gorgeous .", "label": 1, "idx": 99}


def label(doc):
    return doc["label"]


def test_the_nearest_examples_in_equal_label_shares_nearest_last_and_none_of_the_same_source():
    sampler = RetrievedSampler(POOL, label_of=label)
    demos = sampler.sample(4, eval_doc=QUERY)
    # nearest first: 5 (its own phrase: left out), 1 (the plot is dull), 2 (witty, gorgeous film), 0, 3
    assert [d["idx"] for d in demos] == [3, 0, 2, 1]  # two of each label, the nearest last
    assert all(not shares_source(d, QUERY) for d in demos) and shares_source(POOL[5], QUERY)
    assert sampler.given[QUERY["sentence"]] == [3, 0, 2, 1]  # (pool indices, recorded per scored example)
    assert [d["idx"] for d in sampler.sample(3, eval_doc=QUERY)] == [3, 2, 1]  # (the odd one: the nearest's label)


def test_retrieval_never_reads_the_scored_examples_label():
    sampler = RetrievedSampler(POOL, label_of=label)
    assert sampler.sample(4, eval_doc=QUERY) == sampler.sample(4, eval_doc=QUERY | {"label": 0})


def test_rte_rows_are_retrieved_by_their_text_never_by_their_label_written_as_a_word():
    """RTE's rows carry their label as a word too (`label_text`: "entailment", "not_entailment"). It
    is not text: before, every pool row "shared a source" with the scored one through it (retrieval
    found none and the job failed), and the text retrieval compared held the answer."""
    lines = (ROOT / "data" / "rte" / "train.jsonl").read_text().splitlines()[:60]
    pool = [json.loads(line) for line in lines]
    query = json.loads((ROOT / "data" / "rte" / "dev.jsonl").read_text().splitlines()[0])
    assert doc_text(query) == f"{query['sentence1']} {query['sentence2']}"
    sampler = RetrievedSampler(pool, label_of=label)
    demos = sampler.sample(4, eval_doc=query)
    other = {0: "not_entailment", 1: "entailment"}[query["label"]]
    assert len(demos) == 4 and sampler.sample(4, eval_doc=query | {"label": 1 - query["label"], "label_text": other}) \
        == demos and not any(shares_source(d, query) for d in demos)
    assert shares_source(pool[0] | {"sentence2": "An unrelated claim.", "label_text": "x"}, pool[0])  # (the premise)


def test_a_scoring_pass_with_retrieved_demonstrations_records_each_examples_demonstrations(tiny):
    from sweep.pipeline.build import load_project_tasks

    cfg = compose("model=tiny", "method=few_shot", "eval.fewshot_sampler=retrieved", "eval.num_fewshot=2")
    prompting = Prompting.from_config(cfg.eval, 2, 0)
    assert prompting.per_example and prompting.draws == 1  # (per scored example; deterministic: one draw)
    tm, tasks = load_project_tasks(cfg)
    scores = score(make_lm(tiny[0], tiny[1], batch_size=8), tm, tasks, prompting, limit=4, log_samples=True)
    given = scores.retrieved["sst2"]
    assert sorted(given) == [0, 1, 2, 3] and all(len(v) == 2 for v in given.values())
    pool = list(tasks["sst2"].fewshot_docs())
    for sample in scores.results["samples"]["sst2"]:
        prompt = sample["arguments"][0][0]
        for i in given[sample["doc_id"]]:  # the recorded demonstrations are the ones in the prompt
            assert pool[i]["sentence"].strip() in prompt


def test_the_models_own_hidden_states_retrieve_too_and_the_pool_is_embedded_once(tiny):
    from sweep.scoring.fewshot import hidden_states_of

    lm = make_lm(tiny[0], tiny[1], batch_size=8)
    embed = hidden_states_of(lm)
    sampler = RetrievedSampler(POOL, label_of=label, embed=embed)
    demos = sampler.sample(4, eval_doc=QUERY)
    assert len(demos) == 4 and sorted(label(d) for d in demos) == [0, 0, 1, 1]
    assert all(not shares_source(d, QUERY) for d in demos)
    vectors = embed([d["sentence"] for d in POOL[:2]])
    assert abs(float((vectors ** 2).sum(axis=1)[0]) - 1) < 1e-5  # (unit length: cosine is a dot product)
    again = RetrievedSampler(POOL, label_of=label, embed=hidden_states_of(lm), indexes=sampler.indexes)
    assert hidden_states_of(lm) is embed and again.sample(4, eval_doc=QUERY) == demos  # (same model: same vectors)
    assert again.index().rows is sampler.index().rows  # (a later pass reads the vectors the first one built)
    # Each text's vector is the whole model's last hidden state (as `output_hidden_states` gives it), mean-pooled,
    # computed for that text alone: running the backbone only, on batches sorted by length, changes nothing.
    texts = [d["sentence"] for d in POOL] + ["a much longer text than the others, to pad the batch around it"]
    model, tokenizer = tiny
    for text, vector in zip(texts, embed(texts)):
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            alone = model(**ids, output_hidden_states=True).hidden_states[-1][0].mean(0)
        assert torch.allclose(torch.nn.functional.normalize(alone, dim=-1), torch.from_numpy(vector), atol=1e-5)


def test_hidden_state_pool_vectors_are_kept_on_disk_for_the_same_weights_and_embedded_again_for_others(
        tiny, tmp_path, monkeypatch):
    """A later job (another embedder, the same folder: paths.cache/retrieval) reads the pool's vectors
    instead of embedding the pool again (SST-2's: about 45 minutes on 2 cores); weights changed since
    (an adapter trained, another model) or a torn file are embedded afresh."""
    from sweep.scoring.fewshot import HiddenStates

    model, tokenizer = tiny
    texts = [d["sentence"] for d in POOL]
    first = HiddenStates(model, tokenizer, tmp_path)
    weights = first.identity()
    vectors = first.pool(texts, weights)
    [kept] = tmp_path.glob("*.npy")
    embedded = []
    real = HiddenStates.__call__
    monkeypatch.setattr(HiddenStates, "__call__", lambda self, texts: embedded.append(len(texts)) or real(self, texts))
    later = HiddenStates(model, tokenizer, tmp_path)
    assert later.identity() == weights and (later.pool(texts, weights) == vectors).all() and embedded == []
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] += 1.0  # (weights that changed since)
    try:
        changed = later.identity()
        assert changed != weights and later.pool(texts, changed).shape == vectors.shape and embedded == [len(texts)]
    finally:
        with torch.no_grad():
            model.get_input_embeddings().weight[0, 0] -= 1.0
    kept.write_bytes(kept.read_bytes()[:40])  # a torn file
    assert (later.pool(texts, weights) == vectors).all() and embedded == [len(texts)] * 2
