"""The three roles of a task's examples: the development slice is the same for every run and both
arms, never trained on, never a demonstration, never a test example; choices read it, not test."""

import pytest

from sweep.data import splits
from sweep.data.examples import training_pairs
from sweep.pipeline.build import load_project_tasks
from sweep.stages.preference import preference_docs
from tests.conftest import compose


def loaded(*overrides):
    return load_project_tasks(compose("model=tiny", *overrides))[1]


def test_the_slice_is_the_same_whatever_the_seed_or_the_template():
    default = splits.dev_slices(loaded("method=zero_shot"), 50)
    assert default == splits.dev_slices(loaded("method=zero_shot", "eval.template=chat", "seed=3"), 50)
    assert len(default["sst2"]) == 50 and splits.dev_slices(loaded("method=zero_shot"), 0) == {"sst2": []}


def test_a_task_with_its_own_dev_split_takes_the_slice_from_it_and_trains_on_all_of_train():
    task = loaded("data=rte")["rte"]
    dev = splits.dev_indices(task, 40)
    assert dev == list(range(40)) and splits.held_from_training(task, dev) == set()
    scored = splits.dev_task(task, dev).eval_docs
    assert [d["idx"] for d in scored] == [task.dataset["dev"][i]["idx"] for i in range(40)]
    with pytest.raises(splits.ConfigError, match="data.dev_size=401 is larger than task rte's dev split"):
        splits.dev_indices(task, 401)


def test_a_carved_slice_takes_whole_groups_and_none_of_them_trains(tiny):
    """hh_rlhf has no dev split: its slice is carved from train, and every pair that opens with the
    same Human turn as a development pair (its `group_by`) is held from training too."""
    task = loaded("data=hh_rlhf", "method=lora", "stage=reward")["hh_rlhf"]
    dev = splits.dev_indices(task, 32)
    train = task.dataset["train"]
    groups = {splits.group_of(task, train[i]) for i in dev}
    held = splits.held_from_training(task, dev)
    assert set(dev) <= held and len(held) > len(dev)  # (this seed's slice shares a Human turn with other pairs)
    docs = preference_docs(task, "train", None, 0, tiny[1], None, "reward", exclude=held)
    assert len(docs) == len(train) - len(held) and not groups & {splits.group_of(task, d) for d in docs}
    reported = {splits.group_of(task, d) for d in task.eval_docs}
    assert not groups & reported


def test_a_task_without_a_train_split_has_no_slice_and_a_too_large_slice_is_refused():
    tasks = loaded("data=self_instruct", "method=zero_shot")
    with pytest.raises(splits.ConfigError, match="data.dev_size=200 is larger than task self_instruct's train split"):
        splits.dev_slices(tasks, 200)
    scored_on_its_own = tasks["self_instruct"]
    scored_on_its_own.config.training_split = scored_on_its_own.config.validation_split
    assert splits.dev_slices(tasks, 25) == {}  # nothing to carve a slice from: no development score
    with pytest.raises(splits.ConfigError, match="has no train split apart from the split it reports on"):
        splits.dev_indices(scored_on_its_own, 25)


def test_a_choice_reads_the_development_score_and_reports_the_test_one():
    assert splits.selection_metric("sst2/acc") == "dev/sst2/acc"
    assert splits.selection_metric("dev/sst2/acc") == "dev/sst2/acc"
    assert splits.selection_metric("trainable_params") == "trainable_params"  # a run-level metric, as it is
    assert splits.test_metric("dev/sst2/acc") == "sst2/acc"


def test_a_trained_pool_holds_exactly_the_examples_an_adapter_of_that_size_and_seed_trains_on():
    """eval.fewshot_pool=trained (a crossover's baselines): demonstrations come from the labelled
    examples the adapter sees, no others, never the development slice."""
    from sweep.pipeline.plan import plan_of

    task = loaded("data=rte")["rte"]
    dev = splits.dev_indices(task, 40)
    cfg = compose("model=tiny", "data=rte", "method=few_shot", "eval.fewshot_pool=trained",
                  "data.max_train_samples=16", "seed=3")
    pool = splits.demonstration_pool(task, dev, plan_of(cfg).pool)
    trained = training_pairs(task, "train", 16, seed=3, exclude=splits.held_from_training(task, dev))
    assert [splits.text_of(task, d) for d in pool] == [context for context, _ in trained]
    assert len(pool) == 16 and not {splits.text_of(task, task.dataset["dev"][i]) for i in dev} & \
        {splits.text_of(task, d) for d in pool}
    other_seed = splits.demonstration_pool(task, dev, splits.Pool(16, 4))
    assert [d["idx"] for d in other_seed] != [d["idx"] for d in pool]
    whole = splits.demonstration_pool(task, dev, plan_of(compose("model=tiny", "data=rte")).pool)
    assert len(whole) == len(task.dataset["train"])
