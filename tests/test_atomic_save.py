"""Interrupted saves: a checkpoint or adapter folder holds the previous version or the new one, whatever fails when.

Every file-system call a save makes (renames, links, copies, folder creation and removal, permission changes) is
failed in turn, with an OSError and with a KeyboardInterrupt, and the folder is loaded afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import recycle_hf.atomic as atomic
from recycle_hf import RecycleGPTForCausalLM, graft_recycle_module, load_recycle_adapter
from recycle_hf.checkpoint_code.publishing_recyclegpt import is_checkpoint_file, publish_folder

from conftest import tiny_base_model, tiny_recycle_model


FILE_SYSTEM_CALLS = [
    (os, "replace"), (os, "rename"), (os, "link"), (os, "symlink"), (os, "mkdir"), (os, "chmod"), (os, "unlink"),
    (shutil, "rmtree"), (shutil, "copy2"), (shutil, "copytree"), (shutil, "copymode"),
]


class Injected(OSError):
    pass


class InjectedInterrupt(KeyboardInterrupt):
    pass


class Calls:
    def __init__(self) -> None:
        self.names: list[str] = []  # every call made
        self.failable = 0  # calls that can fail for real
        self.fired = False


@contextlib.contextmanager
def failing_call(number: int, error: type[BaseException]) -> Iterator[Calls]:
    """Make the `number`-th failable file-system call (of the functions in FILE_SYSTEM_CALLS) raise `error`.

    `shutil.rmtree(..., ignore_errors=True)` cannot raise an OSError for real, so with OSError it is not counted.
    """
    calls = Calls()
    originals = [(module, name, getattr(module, name)) for module, name in FILE_SYSTEM_CALLS]

    def wrap(name: str, function: Callable) -> Callable:
        def call(*args, **kwargs):
            calls.names.append(name)
            if not (name == "rmtree" and kwargs.get("ignore_errors") and error is Injected):
                calls.failable += 1
                if calls.failable == number:
                    calls.fired = True
                    raise error(f"injected failure of call {number} ({name})")
            return function(*args, **kwargs)

        return call

    for module, name, function in originals:
        setattr(module, name, wrap(name, function))
    try:
        yield calls
    finally:
        for module, name, function in originals:
            setattr(module, name, function)


def _user_files(folder: Path) -> None:
    """Files that are not part of a checkpoint: a README, a nested folder and a symlink."""
    (folder / "README.md").write_text("my notes")
    (folder / "runs" / "deep").mkdir(parents=True)
    (folder / "runs" / "deep" / "events.txt").write_text("logs")
    (folder / "latest").symlink_to("README.md")


def _assert_user_files_kept(folder: Path) -> None:
    assert (folder / "README.md").read_text() == "my notes"
    assert (folder / "runs" / "deep" / "events.txt").read_text() == "logs"
    assert (folder / "latest").is_symlink() and (folder / "latest").read_text() == "my notes"


def _same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def _fail_every_step(save: Callable[[], None], load: Callable[[], dict], reset: Callable[[], None],
                     old: dict, new: dict, error: type[BaseException]) -> list[str]:
    """Run `save` once per file-system call, failing that call; after each, the folder loads as `old` or `new`."""
    outcomes = []
    for number in range(1, 1000):
        reset()
        with failing_call(number, error) as calls:
            try:
                save()
                failed = False
            except (OSError, KeyboardInterrupt):  # the injected error, or one wrapping it (shutil.Error)
                failed = True
        loaded = load()
        is_old, is_new = _same_weights(loaded, old), _same_weights(loaded, new)
        assert is_old != is_new, f"failing call {number} of {calls.names}: the folder loads as neither version"
        if not calls.fired:  # every call has been failed in turn
            assert not failed and is_new
            return outcomes
        # A failure the save absorbs (a hard link that falls back to a copy, an old folder it cannot delete) must
        # leave the new version.
        assert failed or is_new
        outcomes.append("old" if is_old else "new")
    raise AssertionError("the save never finished")


@pytest.mark.parametrize("error", [Injected, InjectedInterrupt], ids=["oserror", "interrupt"])
def test_checkpoint_save_failing_at_every_step_leaves_the_old_or_the_new_checkpoint(tmp_path, error):
    old_model, new_model = tiny_recycle_model("llama", seed=1), tiny_recycle_model("llama", seed=2)
    checkpoint = tmp_path / "checkpoint"

    def reset() -> None:
        shutil.rmtree(checkpoint, ignore_errors=True)
        old_model.save_pretrained(checkpoint)
        _user_files(checkpoint)

    def load() -> dict:
        _assert_user_files_kept(checkpoint)
        return RecycleGPTForCausalLM.from_pretrained(checkpoint).state_dict()

    outcomes = _fail_every_step(
        lambda: new_model.save_pretrained(checkpoint), load, reset, old_model.state_dict(), new_model.state_dict(),
        error,
    )
    # Failures before the swap keep the old checkpoint, failures after it (removing the old folder) the new one.
    assert "old" in outcomes and outcomes[-1] == "new"
    assert len(outcomes) >= 10


@pytest.mark.parametrize("error", [Injected, InjectedInterrupt], ids=["oserror", "interrupt"])
def test_adapter_save_failing_at_every_step_leaves_the_old_or_the_new_adapter(tmp_path, error):
    old_model = graft_recycle_module(tiny_base_model("llama"), init="random")
    new_model = graft_recycle_module(tiny_base_model("llama"), init="random")
    with torch.no_grad():
        for parameter in new_model.recycle_module.parameters():
            parameter.add_(0.1)
    folder = tmp_path / "adapter"

    def reset() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        old_model.save_adapter(folder)
        _user_files(folder)
        (folder / "checkpoint-3").mkdir()  # as Trainer leaves them in its output folder
        (folder / "checkpoint-3" / "optimizer.pt").write_bytes(b"state")

    def load() -> dict:
        _assert_user_files_kept(folder)
        assert (folder / "checkpoint-3" / "optimizer.pt").read_bytes() == b"state"
        return load_recycle_adapter(tiny_base_model("llama"), folder).recycle_module.state_dict()

    outcomes = _fail_every_step(
        lambda: new_model.save_adapter(folder), load, reset, old_model.recycle_module.state_dict(),
        new_model.recycle_module.state_dict(), error,
    )
    assert "old" in outcomes and outcomes[-1] == "new"


def test_when_the_old_folder_cannot_be_put_back_the_error_says_where_it_is(tmp_path, monkeypatch):
    checkpoint, staging = tmp_path / "checkpoint", tmp_path / "staging"
    old_model = tiny_recycle_model("llama", seed=1)
    old_model.save_pretrained(checkpoint)
    tiny_recycle_model("llama", seed=2).save_pretrained(staging)
    real_replace = os.replace
    calls = []

    def replace_only_twice(source, destination):
        calls.append(source)
        if len(calls) > 2:  # staging -> .new and target -> .old work; the swap and the way back fail
            raise Injected("disk gone")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace_only_twice)
    with pytest.raises(OSError, match=r"could not be put back: it is complete at .*\.checkpoint\.old-") as raised:
        publish_folder(staging, checkpoint, is_checkpoint_file)
    monkeypatch.undo()
    assert not checkpoint.exists()
    old_folder = Path(str(raised.value).split("complete at ")[1].split(";")[0])
    assert old_folder.parent == tmp_path
    assert _same_weights(RecycleGPTForCausalLM.from_pretrained(old_folder).state_dict(), old_model.state_dict())


def test_publishing_replaces_old_weight_shards_and_keeps_everything_else(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    tiny_recycle_model("llama", seed=1).save_pretrained(checkpoint)
    (checkpoint / "model-00002-of-00002.safetensors").write_bytes(b"an old shard")
    _user_files(checkpoint)
    tiny_recycle_model("llama", seed=2).save_pretrained(checkpoint)
    assert not (checkpoint / "model-00002-of-00002.safetensors").exists()
    _assert_user_files_kept(checkpoint)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint"]  # no staging or old folder left


def test_saved_folders_keep_their_permissions(tmp_path):
    fresh, restricted = tmp_path / "fresh", tmp_path / "restricted"
    umask = os.umask(0o022)
    try:
        tiny_recycle_model("llama").save_pretrained(fresh)
        restricted.mkdir()
        restricted.chmod(0o750)
        tiny_recycle_model("llama").save_pretrained(restricted)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o755  # a plain new folder, not a private temporary one
    assert stat.S_IMODE(restricted.stat().st_mode) == 0o750


def test_saving_through_a_symlink_or_from_inside_the_folder(tmp_path, monkeypatch):
    real, link = tmp_path / "real", tmp_path / "link"
    tiny_recycle_model("llama", seed=1).save_pretrained(real)
    link.symlink_to(real)
    second = tiny_recycle_model("llama", seed=2)
    second.save_pretrained(link)
    assert link.is_symlink() and (real / "config.json").is_file()
    assert _same_weights(RecycleGPTForCausalLM.from_pretrained(real).state_dict(), second.state_dict())

    monkeypatch.chdir(real)
    third = tiny_recycle_model("llama", seed=3)
    third.save_pretrained(".")
    # The process follows the new folder instead of staying in the deleted old one.
    assert Path.cwd() == real and Path("config.json").is_file()
    assert _same_weights(RecycleGPTForCausalLM.from_pretrained(".").state_dict(), third.state_dict())


def test_a_rank_that_does_not_save_leaves_the_checkpoint_alone(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    first = tiny_recycle_model("llama", seed=1)
    first.save_pretrained(checkpoint)
    tiny_recycle_model("llama", seed=2).save_pretrained(checkpoint, is_main_process=False)
    assert _same_weights(RecycleGPTForCausalLM.from_pretrained(checkpoint).state_dict(), first.state_dict())


def test_staged_file_replaces_the_file_only_when_complete(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("old\n")
    with pytest.raises(InjectedInterrupt):
        with atomic.staged_file(path) as temporary:
            temporary.write_text("half")
            raise InjectedInterrupt
    assert path.read_text() == "old\n"
    with atomic.staged_file(path) as temporary:
        temporary.write_text("new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def _save_forever(target: Path, versions: list, ready_fd: int, hold_fd: int) -> None:
    """A child process's life: save the versions in turn into `target` until it is killed. Before it writes each
    weights file it says so on `ready_fd` (b"w") and waits for one byte on `hold_fd`: the parent then kills it inside
    a save, or lets it go on. No sleep length decides where a kill lands."""
    import transformers.modeling_utils as modeling_utils
    from transformers.utils import logging as transformers_logging

    # tqdm's write lock is a semaphore shared across fork: a child killed while holding it would block the parent.
    transformers_logging.disable_progress_bar()
    write_weights = modeling_utils.safe_save_file

    def announced_write(*args, **kwargs):
        os.write(ready_fd, b"w")
        os.read(hold_fd, 1)
        return write_weights(*args, **kwargs)

    modeling_utils.safe_save_file = announced_write
    os.write(ready_fd, b"r")
    index = 0
    while True:
        versions[index % 2].save_pretrained(target)
        index += 1


def test_saves_killed_at_random_moments_leave_a_loadable_version_and_the_next_save_cleans_up(tmp_path):
    import random
    import signal
    import subprocess

    from recycle_hf.errors import InputNotFoundError
    from recycle_hf.local_folders import check_local_folder

    versions = [tiny_recycle_model("llama", seed=1), tiny_recycle_model("llama", seed=2)]
    states = [model.state_dict() for model in versions]
    target = tmp_path / "checkpoint"
    versions[0].save_pretrained(target)  # a complete version exists before the first kill
    rounds = random.Random(27)
    outcomes = []
    for round_index in range(20):
        read_fd, write_fd = os.pipe()
        hold_read_fd, hold_write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a real process that saves until SIGKILL, whatever it is doing then
            try:
                os.close(read_fd)
                os.close(hold_write_fd)
                _save_forever(target, versions, write_fd, hold_read_fd)
            finally:
                os._exit(1)
        os.close(write_fd)
        os.close(hold_read_fd)
        assert os.read(read_fd, 1) == b"r"
        # Odd rounds kill at a weights write (inside a save, its staging folder half-written), chosen by count, the
        # last round among them; even rounds let every write go and kill at a random moment (between saves, in a
        # rename, anywhere).
        writes_before_kill = rounds.randint(1, 4) if round_index % 2 == 1 else None
        if writes_before_kill is None:
            os.write(hold_write_fd, b"g" * 4096)  # enough for every write the child reaches before the kill
            time.sleep(rounds.uniform(0.0, 0.3))
        else:
            for _ in range(writes_before_kill - 1):
                assert os.read(read_fd, 1) == b"w"
                os.write(hold_write_fd, b"g")
            assert os.read(read_fd, 1) == b"w"  # the child waits inside a save
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        os.close(hold_write_fd)
        if target.exists():
            folder, outcomes = target, outcomes + ["target"]
        else:  # killed between the renames: the loader names the newest complete version
            with pytest.raises(InputNotFoundError, match="a save of it was interrupted") as raised:
                check_local_folder(str(target), "model", "config.json")
            folder = Path(str(raised.value).split("complete version is ")[1].split("; rename")[0])
            outcomes.append("named")
        loaded = RecycleGPTForCausalLM.from_pretrained(folder).state_dict()
        assert any(_same_weights(loaded, state) for state in states)
        if folder != target:
            os.replace(folder, target)  # as the error says
    leftovers = [entry for entry in tmp_path.iterdir() if entry.name.startswith(".checkpoint.")]
    assert leftovers, "a kill inside a save left no staging folder"

    # A save that is still running (its process alive) keeps its folder; the dead saves' folders go.
    sleeper = subprocess.Popen(["sleep", "120"])
    live = tmp_path / f".checkpoint.saving-{sleeper.pid}-{time.time_ns():x}-0123abcd"
    live.mkdir()
    try:
        versions[0].save_pretrained(target)
        assert sorted(entry.name for entry in tmp_path.iterdir() if entry.name.startswith(".")) == [live.name]
        assert _same_weights(RecycleGPTForCausalLM.from_pretrained(target).state_dict(), states[0])
    finally:
        sleeper.kill()
        sleeper.wait()
    versions[1].save_pretrained(target)
    assert not [entry for entry in tmp_path.iterdir() if entry.name.startswith(".")]


def test_a_missing_folder_names_the_newest_complete_version_not_a_partly_deleted_one(tmp_path):
    from recycle_hf.checkpoint_code.publishing_recyclegpt import _sibling
    from recycle_hf.errors import InputNotFoundError
    from recycle_hf.local_folders import check_local_folder

    target = tmp_path / "checkpoint"
    old_model, new_model = tiny_recycle_model("llama", seed=1), tiny_recycle_model("llama", seed=2)
    older = _sibling(target, "old")
    old_model.save_pretrained(older)
    (older / "model.safetensors").unlink()  # as an older save's interrupted deletion would leave it (old format)
    complete_old = _sibling(target, "old")
    old_model.save_pretrained(complete_old)
    newest = _sibling(target, "new")
    new_model.save_pretrained(newest)
    truncated = _sibling(target, "new")  # newer still, but its weights are cut short
    new_model.save_pretrained(truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputNotFoundError, match=f"newest complete version is {newest}"):
        check_local_folder(str(target), "model", "config.json")
    with pytest.raises(Exception, match=f"newest complete version is {newest}"):
        RecycleGPTForCausalLM.from_pretrained(target)
    shutil.rmtree(newest)
    with pytest.raises(InputNotFoundError, match=f"newest complete version is {complete_old}"):
        check_local_folder(str(target), "model", "config.json")
