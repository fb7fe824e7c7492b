"""Which demonstrations go into a k-shot prompt: lm-eval context samplers.

lm-eval's default sampler gives every scored example its own k random demonstrations, and its
`BalancedSampler` is an unimplemented stub. The in-context literature (Zhao et al. 2021,
"Calibrate Before Use") scores a *draw* instead: one fixed set of k demonstrations shared by
every example, so a score belongs to one prompt, draws can be compared and averaged, contextual
calibration has one prompt to estimate its bias under, and the shared prefix can be computed once
(sweep/scoring/prefix_cache.py). `eval.fewshot_per_example=true` keeps lm-eval's per-example sampling.

`eval.fewshot_sampler=retrieved` is the other strong practice (KATE: Liu et al. 2022, "What Makes
Good In-Context Examples for GPT-3?"): each scored example gets the pool examples nearest to it.
lm-eval has no retrieval sampler; ours ranks by TF-IDF cosine (scikit-learn: no download, fitted
once per pool) or by the model's own mean-pooled hidden states (eval.retriever=hidden), takes the
labels in equal shares, never an example that shares a source with the one scored
(sweep/data/grouping.py: a phrase of the same sentence, the same premise), and puts the nearest
last, next to the question. It reads only the pool's labels, never the scored example's.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lm_eval.api.samplers import ContextSampler

from sweep.data.grouping import related, words
from sweep.scoring.checks import RETRIEVED
from sweep.scoring.leakage import doc_text, text_fields


class BalancedSampler(ContextSampler):
    """Equal numbers of demonstrations per label (the remainder to labels chosen at random), in a
    shuffled order, so that no label dominates the prompt."""

    def __init__(self, df=None, *, label_of, rnd=None, **kwargs):
        super().__init__(df, rnd=rnd, **kwargs)
        self.label_of = label_of
        self._by_label = None

    def by_label(self) -> dict:
        """The pool grouped by label, built once (pools hold up to tens of thousands of examples)."""
        if self._by_label is None:
            self._by_label = defaultdict(list)
            for doc in self.fewshot_docs():
                self._by_label[self.label_of(doc)].append(doc)
        return self._by_label

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        by_label = self.by_label()
        labels = sorted(by_label, key=str)
        quota = {label: n // len(labels) for label in labels}
        for label in self.rnd.sample(labels, n % len(labels)):
            quota[label] += 1
        chosen = []
        for label in labels:
            docs = by_label[label]
            # one spare, in case the example being scored is drawn (then it is dropped)
            picked = [d for d in self.rnd.sample(docs, min(len(docs), quota[label] + 1)) if d != eval_doc]
            if len(picked) < quota[label]:
                raise ValueError(f"a balanced draw of {n} needs {quota[label]} examples of label {label!r}; "
                                 f"the pool has {len(picked)}")
            chosen += picked[:quota[label]]
        self.rnd.shuffle(chosen)
        return chosen


class FixedDraw(ContextSampler):
    """The same demonstrations, in the same order, for every example."""

    def __init__(self, demonstrations: list[dict]):
        super().__init__(list(demonstrations))
        self.demonstrations = list(demonstrations)

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        if n != len(self.demonstrations):
            raise ValueError(f"this draw holds {len(self.demonstrations)} demonstrations, not {n}")
        return list(self.demonstrations)

    def set_rnd(self, rnd):  # lm-eval reseeds samplers before scoring; a fixed draw has nothing to seed
        return self


class RetrievedSampler(ContextSampler):
    """The k pool examples nearest to the scored one (TF-IDF cosine of their text fields, or of
    `embed`'s unit vectors), labels in equal shares (the remainder to the nearest), none sharing a
    source with it, nearest last. What each scored example got is kept in `given` (its text -> the
    pool indices), for the record. `indexes`: pool vectors already built, by retriever and pool
    texts (a model's passes share them: `retrieval_indexes`)."""

    def __init__(self, df=None, *, label_of, rnd=None, embed=None, indexes: dict | None = None, **kwargs):
        super().__init__(df, rnd=rnd, **kwargs)
        self.label_of, self.embed = label_of, embed
        self.indexes = {} if indexes is None else indexes
        self.given: dict[str, list[int]] = {}
        self.query = None  # the example being scored (set by `retrieving`)
        self._index = None

    def index(self) -> PoolIndex:
        """The pool as retrieval reads it, built once per sampler (its vectors once per pool and, for
        hidden states, per model weights: kept on disk between jobs where the embedder has a folder)."""
        if self._index is None:
            docs = list(self.fewshot_docs())
            texts = [doc_text(d) for d in docs]
            weights = self.embed.identity() if isinstance(self.embed, HiddenStates) else None
            key = (self.embed is None, weights, texts_digest(texts))
            if key not in self.indexes:
                self.indexes[key] = pool_vectors(texts, self.embed, weights)
            labels = [self.label_of(d) for d in docs]
            self._index = PoolIndex(docs, labels, sorted(set(labels), key=str), *self.indexes[key])
        return self._index

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        import numpy as np

        eval_doc = eval_doc if eval_doc is not None else self.query
        if eval_doc is None:
            raise ValueError("retrieved demonstrations are chosen per scored example; none was given")
        pool = self.index()
        similarity = pool.rows @ pool.vectorize(doc_text(eval_doc)).T
        similarity = np.asarray(similarity.toarray() if hasattr(similarity, "toarray") else similarity).ravel()
        order = np.argsort(-similarity, kind="stable")
        labels = pool.labels
        quota = {label: n // len(pool.kinds) for label in pool.kinds}
        nearest_first = list(dict.fromkeys(labels[i] for i in order))  # (the remainder to the nearest labels)
        for label in nearest_first[:n % len(pool.kinds)]:
            quota[label] += 1
        chosen = []
        for i in order:
            if quota[labels[i]] and not shares_source(pool.docs[i], eval_doc):
                chosen.append(int(i))
                quota[labels[i]] -= 1
                if len(chosen) == n:
                    break
        if len(chosen) < n:
            raise ValueError(f"retrieval found {len(chosen)} of {n} demonstrations with balanced labels")
        chosen.reverse()  # nearest last, next to the question
        self.given[doc_text(eval_doc)] = chosen
        return [pool.docs[i] for i in chosen]

    def set_rnd(self, rnd):  # deterministic: nothing to seed (lm-eval reseeds samplers before scoring)
        return self


@dataclass(frozen=True)
class PoolIndex:
    """A pool as retrieval reads it: its documents, their labels, the distinct labels, their vectors
    as rows, and the function that gives a scored example's vector."""
    docs: list
    labels: list
    kinds: list
    rows: object
    vectorize: Callable


def texts_digest(texts: list[str]) -> str:
    """A pool's identity by content (sha256 of its texts in order): the key of its vectors."""
    import hashlib

    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


def pool_vectors(texts: list[str], embed=None, weights: str | None = None) -> tuple[object, Callable]:
    """(the texts' vectors as rows, text -> its vector): TF-IDF over word unigrams and bigrams fitted
    on the texts, or `embed`'s (a HiddenStates' through its folder, for the model `weights`)."""
    if isinstance(embed, HiddenStates):
        return embed.pool(texts, weights), lambda text: embed([text])
    if embed is not None:
        return embed(texts), lambda text: embed([text])
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    return vectorizer.fit_transform(texts), lambda text: vectorizer.transform([text])


def retrieval_indexes(lm) -> dict:
    """The pool vectors built for an lm-eval model's passes (the race scores many with one pool)."""
    if getattr(lm, "_retrieval_indexes", None) is None:
        lm._retrieval_indexes = {}
    return lm._retrieval_indexes


class HiddenStates:
    """eval.retriever=hidden: texts as the model's last hidden states, mean-pooled over their tokens
    and scaled to unit length (cosine = dot product). The backbone alone runs (the LM head's logits
    over the whole vocabulary are not needed), on batches of texts of similar length (little
    padding); each text's vector is what it gets alone."""

    BATCH = 64
    MAX_TOKENS = 256  # of a text (a longer one is cut)

    def __init__(self, model, tokenizer, folder: Path | None = None):
        self.model, self.tokenizer, self.folder = model, tokenizer, folder

    def identity(self) -> str:
        """What the vectors depend on, as a digest: the weights as they are now (an adapter trained
        since changes them), the tokenizer and the cut. About a second for 135M parameters."""
        import hashlib
        import json

        import torch

        h = hashlib.blake2b(digest_size=20)
        for name, tensor in self.model.state_dict().items():
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
            h.update(flat.view(torch.uint8).numpy().data)
        h.update(json.dumps([self.tokenizer.name_or_path, len(self.tokenizer), self.MAX_TOKENS]).encode())
        return h.hexdigest()

    def pool(self, texts: list[str], weights: str):
        """The vectors of a pool's `texts` for the model `weights` (`identity()`), read from `folder`
        when an earlier job embedded the same texts with the same weights (SST-2's 40,962 phrases take
        SmolLM2-135M about 45 minutes on 2 cores), else embedded and written there."""
        import numpy as np

        if self.folder is None:
            return self(texts)
        path = self.folder / f"{texts_digest([weights, *texts])[:40]}.npy"
        if path.is_file():
            try:
                vectors = np.load(path, allow_pickle=False)
                if vectors.shape[0] == len(texts):
                    return vectors
            except (OSError, ValueError):
                pass  # (a torn or foreign file: embedded again below)
        vectors = self(texts)
        self.folder.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        with open(part, "wb") as f:
            np.save(f, vectors)
        os.replace(part, path)
        return vectors

    def __call__(self, texts: list[str]):
        import numpy as np
        import torch

        backbone = self.model.get_decoder()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), self.model.config.get_text_config().hidden_size), dtype=np.float32)
        for start in range(0, len(texts), self.BATCH):
            rows = order[start:start + self.BATCH]
            batch = self.tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.MAX_TOKENS).to(self.model.device)
            with torch.no_grad():
                hidden = backbone(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            vectors[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return vectors


def keep_pool_vectors_in(lm, folder: Path) -> None:
    """The hidden-state pool vectors of `lm`'s model are kept in `folder` (paths.cache/retrieval)
    between jobs."""
    lm._pool_vector_folder = folder


def hidden_states_of(lm) -> HiddenStates:
    """The embedder of an lm-eval model (one per model object)."""
    if getattr(lm, "_hidden_states", None) is None:
        lm._hidden_states = HiddenStates(lm.model, lm.tokenizer, getattr(lm, "_pool_vector_folder", None))
    return lm._hidden_states


def retrieving(task, sampler: RetrievedSampler) -> None:
    """Give `task` the retrieval sampler. lm-eval hands the scored example to its sampler only when
    demonstrations come from the test split itself, so the task's `fewshot_context` tells the
    sampler which example it is building a prompt for (wrapped once per task object)."""
    task.sampler = sampler
    if not getattr(task, "_tells_its_sampler", False):
        build = task.fewshot_context

        def fewshot_context(doc, *args, **kwargs):
            if isinstance(task.sampler, RetrievedSampler):
                task.sampler.query = doc
            return build(doc, *args, **kwargs)

        task.fewshot_context, task._tells_its_sampler = fewshot_context, True


def shares_source(a: dict, b: dict) -> bool:
    """Whether two documents come from one source: a text field of one equal to, inside or holding
    the same field of the other (a phrase of the same SST-2 sentence, the same RTE premise)."""
    return any(isinstance(b.get(k), str) and related(words(a[k]), words(b[k])) for k in text_fields(a))


def demonstration_sampler(kind: str, pool: list[dict], label_of, seed: int) -> ContextSampler:
    """A sampler of `kind` over `pool` (label_of: doc -> label, used by `balanced` and `retrieved`)."""
    if kind == "balanced":
        return BalancedSampler(pool, label_of=label_of, rnd=seed)
    if kind == RETRIEVED:
        return RetrievedSampler(pool, label_of=label_of, rnd=seed)
    return ContextSampler(pool, rnd=seed)


def draw_seed(seed: int, draw: int) -> int:
    """The seed of draw `draw` (independent draws, reproducible from the run's seed)."""
    return random.Random(f"{seed}/{draw}").randrange(2**31)


def draw(kind: str, pool: list[dict], k: int, label_of, seed: int) -> list[dict]:
    """One draw of k demonstrations from `pool`."""
    return list(demonstration_sampler(kind, pool, label_of, seed).sample(k))
