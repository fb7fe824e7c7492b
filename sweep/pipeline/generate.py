"""The generator's job: Self-Instruct's bootstrap loop (Wang et al. 2023) with any model the harness loads:
`python generate_instructions.py` (config: conf/generate_instructions.yaml).

Each round: new instructions are sampled from prompts of 8 in-context instructions (6 from the
hand-written seed pool, 2 from the generated pool once it has two), filtered (sweep/self_instruct/filters.py:
length, keywords, duplicates, ROUGE-L >= 0.7 with any pooled instruction), asked whether they are
classification tasks, and given an instance: input-first for ordinary tasks, output-first for
classification tasks; instances with no output, or the input copied, are dropped.

Why our own loop: the authors' scripts call the OpenAI API; here the model is a local causal LM
sampled with transformers' `generate` (batched, KV cache, seeded). A round is the unit of
progress: its tasks and then its record are appended to the output folder and fsynced, so a killed
run continues from the last whole round when the same command is run again, and each round is
seeded by (seed, round), so a resumed run writes what an uninterrupted one would have.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep.config import ConfigError, is_int, require
from sweep.data.examples import GENERATED_DATASET, TASKS_FILE
from sweep.data.examples import GENERATED_FIELDS as FIELDS
from sweep.self_instruct.card import data_card, round_metrics, similarity_plot, totals
from sweep.self_instruct.rounds import generate_round
from sweep.self_instruct.sampling import ModelSampler
from sweep.self_instruct.state import ROUNDS_FILE, State, check_folder, load_seed_tasks, settings_of, write_synced
from sweep.vocabulary import ERROR, GENERATED_DIR, GENERATED_SHA_TAG, METHOD, MODEL, SEED

log = logging.getLogger(__name__)


def validate_config(cfg: DictConfig) -> None:
    """Everything checkable without loading anything: the loop's keys, the model's, the folder's settings."""
    from sweep.self_instruct.checks import validate_generation
    from sweep.training.checks import validate_model

    require(is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "must be an integer >= 0")
    validate_generation(cfg.generation)
    validate_model(cfg.model)
    check_folder(Path(cfg.generation.output_dir), settings_of(cfg.model, cfg.generation, cfg.seed))


def run(cfg: DictConfig) -> dict[str, float]:
    """Generate (or continue generating) into generation.output_dir, recording to MLflow."""
    import mlflow

    from sweep.runtime import interrupts, memory, processes
    from sweep.runtime.hydra_job import use_all_cores
    from sweep.tracking import lifecycle, records, store
    from sweep.training.models import load_model_and_tokenizer

    validate_config(cfg)
    seed_tasks = load_seed_tasks(cfg.generation.seed_file, cfg.generation.in_context)
    experiment_id = store.open_experiment(cfg.tracking)
    state = State.open(Path(cfg.generation.output_dir), settings_of(cfg.model, cfg.generation, cfg.seed))
    store.close_orphaned_runs(experiment_id, cfg.tracking)
    interrupts.install_signal_handlers()
    memory.map_large_blocks()
    use_all_cores()
    model, tokenizer = load_model_and_tokenizer(cfg.model, Path(cfg.paths.cache), cfg.seed)
    g = cfg.generation
    sampler = ModelSampler(model, tokenizer, g.temperature, g.top_p, g.batch_size)
    tags = {MODEL: cfg.model.name, SEED: str(cfg.seed), METHOD: "self_instruct_generation",
            "generation_dir": str(state.folder)} | processes.owner_tags()
    resumed = state.run_id if state.run_id and _exists(state.run_id) else None
    with lifecycle.mlflow_run(experiment_id, f"self-instruct-{cfg.model.name}-seed{cfg.seed}", tags,
                             resume_run_id=resumed,
                             system_metrics_interval=store.system_metrics_interval(cfg.tracking),
                             outage_seconds=cfg.tracking.outage_seconds) as run:
        state.remember_run(run.info.run_id)
        if resumed is None:
            seeds = Path(g.seed_file)
            records.log_inputs(OmegaConf.to_container(cfg, resolve=True), [seeds],
                               [("self_instruct/seed", seeds, "seed")])
        else:
            log.info("continuing run %s from round %d", resumed, len(state.rounds) + 1)
            if ERROR in run.data.tags:  # (left by whoever closed it when its process died)
                mlflow.MlflowClient().delete_tag(resumed, ERROR)
        generate_rounds(g, cfg.seed, sampler, seed_tasks, state,
                        on_round=lambda record: records.log_metrics(round_metrics(record), step=record["round"]))
        metrics = totals(state.rounds)
        record_dataset(cfg, state, len(seed_tasks))
        records.log_metrics(metrics)
    return metrics


def _exists(run_id: str) -> bool:
    import mlflow

    try:
        mlflow.MlflowClient().get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def record_dataset(cfg: DictConfig, state: State, seed_count: int) -> None:
    """The generated set as the run's artifact and MLflow dataset (digest, source), with its data
    card, the per-round records and the similarity histogram."""
    import mlflow
    import pandas as pd

    from sweep.runtime.files import sha256
    from sweep.tracking import records

    path = state.folder / TASKS_FILE
    path.touch()
    digest = sha256(path)
    card = data_card(cfg.model.name, cfg.generation, cfg.seed, state, digest, seed_count)
    write_synced(state.folder / "data_card.md", card)
    similarity_plot(state.rounds, state.folder / "similarity.png")
    frame = pd.DataFrame(state.tasks, columns=["id", "name", *FIELDS, "is_classification", "round"])
    dataset = mlflow.data.from_pandas(frame, source=str(path.resolve()), name=GENERATED_DATASET)
    def write():
        records.log_input(dataset, "generated")
        for name in (TASKS_FILE, ROUNDS_FILE, "data_card.md", "similarity.png"):
            mlflow.log_artifact(str(state.folder / name), GENERATED_DIR)
        mlflow.set_tag(GENERATED_SHA_TAG, digest)
    records.stored("logging the generated tasks", write)


def main(cfg: DictConfig) -> dict[str, float] | None:
    """The entry point's job: bad input is one line and exit status 2, with nothing created."""
    from sweep.runtime.hydra_job import report_bad_input
    from sweep.runtime.secrets import guard_output

    guard_output()
    try:
        return run(cfg)
    except ConfigError as e:
        report_bad_input(e, single_run=True)


def generate_rounds(g: DictConfig, seed: int, sampler, seed_tasks: list[dict], state: State, on_round=None) -> None:
    """The rounds after the folder's last whole one, up to generation.rounds, each committed to
    the folder as it ends (then handed to `on_round`)."""
    from tqdm import tqdm

    done = len(state.rounds)
    for number in tqdm(range(done + 1, g.rounds + 1), desc="Self-Instruct rounds", initial=done, total=g.rounds):
        record = state.add(generate_round(number, g, seed, sampler, seed_tasks, state.tasks))
        log.info("round %d: %d of %d candidates kept, pool %d", number, record["accepted"], record["candidates"],
                 record["pool_size"])
        if on_round:
            on_round(record)
