"""Model sources and the conversion cache (one valid cache, whatever happens to the workers)."""

import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

from sweep.config import ConfigError
from sweep.training.models import bundled_gguf, cached_build, load_model_and_tokenizer
from tests.conftest import compose


def _slow_build(target: str, log: str) -> None:
    def build(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        (tmp / "part1").write_text("a")
        time.sleep(0.5)  # a window in which a second worker would collide
        (tmp / "part2").write_text("b")

    cached_build(Path(target), build)


def test_two_processes_build_the_cache_once(tmp_path):
    target, log = tmp_path / "cache" / "model", tmp_path / "log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_slow_build, args=(str(target), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log.read_text() == "built\n"
    assert sorted(f.name for f in target.iterdir()) == ["part1", "part2"]
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name] == []


def test_an_interrupted_build_leaves_no_cache(tmp_path):
    target = tmp_path / "model"

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_build(target, broken)
    assert not target.exists() and list(tmp_path.glob("model.tmp-*")) == []
    cached_build(target, lambda tmp: (tmp / "whole").write_text("y"))
    assert (target / "whole").read_text() == "y"


def _killed_build(target: str, started: str) -> None:
    def build(tmp: Path) -> None:
        (tmp / "weights").write_bytes(b"x" * 1_000_000)
        Path(started).write_text(str(tmp))
        time.sleep(60)  # SIGKILLed here, its temporary folder left behind

    cached_build(Path(target), build)


def test_a_sigkilled_build_leaves_nothing_the_next_build_keeps(tmp_path):
    """SIGKILL runs no cleanup: the half-written temporary folder stays until the next build
    removes it under the lock; no cache folder appears in between."""
    target, started = tmp_path / "model", tmp_path / "started"
    proc = mp.get_context("spawn").Process(target=_killed_build, args=(str(target), str(started)))
    proc.start()
    for _ in range(600):
        if started.exists():
            break
        time.sleep(0.1)
    proc.kill()
    proc.join(10)
    left = Path(started.read_text())
    assert left.is_dir() and not target.exists()
    cached_build(target, lambda tmp: (tmp / "whole").write_text("y"))
    assert (target / "whole").read_text() == "y" and not left.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_tiny_model_is_seeded_and_uses_the_real_tokenizer():
    cfg = compose("model=tiny")
    m1, tok = load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=3)
    m2, _ = load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert len(tok) == 49152 and tok.decode(tok.encode("Answer: positive")) == "Answer: positive"
    assert m1.config.num_hidden_layers == 2 and not cfg.model.trust_remote_code


def test_missing_bundle_package_says_how_to_install():
    cfg = compose("model.gguf.package=no_such_model_pkg")
    with pytest.raises(ConfigError, match="model.gguf.package='no_such_model_pkg' is not installed: run `make install`"):
        bundled_gguf(cfg.model.gguf)


def test_any_local_folder_loads_with_name_or_path(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").glob("*.safetensors")) == ["model.safetensors"]
    cfg = compose(f"model.name_or_path={tmp_path}/m")
    loaded, _ = load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_pickled_weights_are_never_loaded(tmp_path, tiny):
    """A folder with only pytorch_model.bin is refused in one line before loading, and the loader
    itself asks for safetensors (unpickling a checkpoint can run code)."""
    from sweep.pipeline.checks import validate

    model, tok = tiny
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickled checkpoint
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "pytorch_model.bin").is_file() and not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(ConfigError, match="holds no .safetensors weights; pickled weights"):
        validate(compose("model=tiny", f"model.name_or_path={tmp_path}"))
    cfg = compose("model=tiny", f"model.name_or_path={tmp_path}")
    with pytest.raises(OSError, match="safetensors"):
        load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=0)
