"""Checkpoint faults: saves cut off by a crash, damaged and missing files,
half-deleted folders, checkpoints deleted while read, permissions, a full
disk (flipped bits: test_checkpoint_flips). Each is one error that names the
step and says what to do, or a warning when the folder can be skipped."""

import errno
import glob
import os
import shutil

import pytest

from conftest import tiny_config
from smallgpt_jax.checkpoint import writer as checkpoint, faults, reader as loading
from smallgpt_jax.checkpoint.workdir import prepare_workdir
from smallgpt_jax.system.errors import UserError
from test_checkpoint import (assert_trees_identical, fresh_state, on_disk, perturbed_state,
                             run_meta, save_steps, small_tree)


def test_an_incomplete_checkpoint_is_skipped_with_a_warning(tmp_path, capsys):
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (fresh_state(config), None), 2: (fresh_state(config), None)})
    # What a crash mid-save leaves: a tmp folder with part of the files.
    ckdir = os.path.join(workdir, "checkpoints")
    tmp = os.path.join(ckdir, "3.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(tmp, "state.orbax-checkpoint-tmp"))
    with open(os.path.join(tmp, "state.orbax-checkpoint-tmp", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": {')  # Cut off mid-write.
    capsys.readouterr()
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        assert ckpt.steps() == [1, 2]
        assert ckpt.resume_point(config.to_dict()).step == 2
    err = capsys.readouterr().err
    assert f"skipping incomplete checkpoint {tmp}" in err, err
    assert not os.path.exists(tmp)


# After the failed restore, TensorStore finishes its reads in flight onto Orbax's
# asyncio loop, closed by then; Python reports each as unraisable (the command
# line drops them: runtime._quiet_unraisable). Nothing else is filtered.
# (A missing array file: the reads of the other arrays, dropped, report theirs too.)
@pytest.mark.filterwarnings(
    "ignore:(?s).*RuntimeError. Event loop is closed:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings(
    "ignore:(?s).*See full TensorStore details:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncate", "delete", "delete an array file"])
def test_a_damaged_checkpoint_fails_clearly_and_an_earlier_one_can_be_chosen(
        tmp_path, damage, capsys):
    config, workdir = tiny_config(), str(tmp_path / "run")
    first, second = perturbed_state(config), fresh_state(config)
    save_steps(workdir, config, {1: (first, None), 2: (second, None)})
    files = glob.glob(os.path.join(workdir, "checkpoints", "2", "state", "**", "d", "*"),
                      recursive=True)
    if damage == "delete an array file":  # The data of one array, not the tree's metadata.
        files = [max(glob.glob(os.path.join(workdir, "checkpoints", "2", "state", "ocdbt.*",
                                            "d", "*")), key=os.path.getsize)]
    for path in files:
        if damage.startswith("delete"):
            os.remove(path)
        else:
            os.truncate(path, os.path.getsize(path) // 2)
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        resume = ckpt.resume_point(config.to_dict())
        with pytest.raises(UserError, match=r"checkpoints/2 could not be restored \(\w+: "
                                            r"Error reading .*damaged"
                                            r".*--config\.train\.resume_step=N \(N in 1\)") as e:
            ckpt.restore_state(resume, fresh_state(config))
    # The array and file named, not Orbax's wrapper cut off inside a TensorStore spec.
    assert "TensorStore" not in str(e.value) and "\n" not in str(e.value)
    config.train.resume_step = 1
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        restored = ckpt.restore_state(ckpt.resume_point(config.to_dict()), fresh_state(config))
    assert_trees_identical(restored, first)
    assert on_disk(workdir) == [1]  # The damaged, newer one is gone.
    assert "deleting checkpoints 2" in capsys.readouterr().err


@pytest.mark.parametrize("remove,named", [
    ("state/manifest.ocdbt", "state/manifest.ocdbt is missing"),
    ("state/ocdbt.process_0", "state/ocdbt.process_* is missing"),
    ("state/_METADATA", "state/_METADATA is missing"),
    ("meta/metadata", "meta/metadata is missing"),
])
def test_missing_checkpoint_files_are_named_before_orbax_reads_them(tmp_path, remove, named):
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (small_tree(1), None), 2: (small_tree(2), None)})
    path = os.path.join(workdir, "checkpoints", "2", remove)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    named = named.replace("*", r"\*")
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        with pytest.raises(UserError, match=rf"checkpoints/2 could not be restored \({named}.*"
                                            r"resume_step=N \(N in 1\)"):
            ckpt.resume_point(config.to_dict())
    with pytest.raises(UserError, match=rf"checkpoints/2 could not be read \({named}.*"
                                        r"complete ones: 1\)"):
        loading.load_params(workdir, step=2)


def test_a_damaged_metrics_file_names_its_checkpoint_and_moving_it_away_resumes(tmp_path):
    # Orbax reads every step's metrics when it opens the directory: one bad
    # file would block every resume, whichever step is asked for.
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (small_tree(1), 2.0), 2: (small_tree(2), 1.5)})
    step_2 = os.path.join(workdir, "checkpoints", "2")
    os.truncate(os.path.join(step_2, "metrics", "metrics"), 5)
    message = (r"checkpoints/2 is damaged \(metrics/metrics is damaged\); move it out of the "
               rf"way \(mv {step_2} {os.path.join(workdir, 'damaged-2')}\)")
    with pytest.raises(UserError, match=message):
        checkpoint.Checkpointer(workdir, 2)
    with pytest.raises(UserError, match=message):
        loading.load_params(workdir, step=1)
    shutil.move(step_2, os.path.join(workdir, "damaged-2"))  # What the message says to do.
    prepare_workdir(workdir)  # The moved folder does not make the workdir foreign.
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        assert ckpt.resume_point(config.to_dict()).step == 1


def test_the_reads_a_failed_restore_drops_print_nothing_on_the_command_line(
        capsys, monkeypatch):
    # Each dropped read of a missing array file: a traceback with a page of spec.
    import sys
    from smallgpt_jax.system import runtime
    monkeypatch.setattr(sys, "unraisablehook", runtime._quiet_unraisable)

    class Dropped:  # Python reports an error in __del__ as unraisable.
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    def report(error):
        Dropped(error)
        return capsys.readouterr().err

    assert report(Exception("Encountered error while reading array index: (slice(0, 16, 1),). "
                            "See full TensorStore details: <bound method spec of TensorStore({"
                            "\n  'base': {")) == ""
    assert report(RuntimeError("Event loop is closed")) == ""
    assert "something else" in report(ValueError("something else"))


EDITS = {  # meta/metadata edited by hand: each a one-line error, never a traceback.
    "config": ("config", "x"), "section": ("config.model", "x"),
    "layers": ("config.model.num_layers", "two"), "flag": ("config.model.use_bias", 1),
    "chars": ("tokenizer.chars", 5), "tokenizer": ("tokenizer", [1]),
    "kind": ("tokenizer.kind", "nope"), "best": ("best_val_loss", "low"),
    "time": ("train_time_s", "long"), "eval": ("eval", [1]), "checksums": ("checksums", "x"),
    "checksum": ("checksums.params/w", "x"), "points": ("branch_points", 4),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_metadata_file_is_one_error_for_training_and_sampling(tmp_path, edit):
    import json
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (small_tree(1), None), 2: (small_tree(2), 2.0)})
    path = os.path.join(workdir, "checkpoints", "2", "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    key, value = EDITS[edit]
    *parents, last = key.replace("params/", "params|").split(".")
    inner = meta
    for part in parents:
        inner = inner[part]
    inner[last.replace("|", "/")] = value
    with open(path, "w") as f:
        json.dump(meta, f)
    damaged = r"\(meta/metadata is damaged: .*\); "
    with pytest.raises(UserError, match=r"checkpoints/2 could not be read " + damaged
                                        + r".*complete ones: 1\)"):
        loading.load_params(workdir)
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        with pytest.raises(UserError, match=r"checkpoints/2 could not be restored " + damaged
                                            + r".*resume_step=N \(N in 1\)"):
            ckpt.resume_point(config.to_dict())


@pytest.mark.parametrize("name,content", [("_CHECKPOINT_METADATA", "[]"),
                                          ("metrics/metrics", '{"val_loss": "low"}')])
def test_an_edited_orbax_file_names_its_checkpoint(tmp_path, name, content):
    # Valid JSON, but not what Orbax wrote: it blamed the next save, or named no step.
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (small_tree(1), 2.0), 2: (small_tree(2), 1.5)})
    with open(os.path.join(workdir, "checkpoints", "2", name), "w") as f:
        f.write(content)
    message = rf"checkpoints/2 is damaged \({name} is damaged\); move it out of the way"
    with pytest.raises(UserError, match=message):
        checkpoint.Checkpointer(workdir, 2)
    with pytest.raises(UserError, match=message):
        loading.load_params(workdir, step=1)


def test_a_half_deleted_older_checkpoint_is_skipped_and_removed(tmp_path, capsys):
    # What a kill during the keep policy's deletion left before deletions were
    # renames: an older step folder holding only part of its files.
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {s: (small_tree(s), None) for s in (1, 2, 3)}, keep=3)
    step_1 = os.path.join(workdir, "checkpoints", "1")
    os.remove(os.path.join(step_1, "_CHECKPOINT_METADATA"))
    shutil.rmtree(os.path.join(step_1, "meta"))
    capsys.readouterr()
    # A reader (sampling) skips it, and leaves the training run's files alone.
    assert loading.load_params(workdir, 2)[0]["w"].tolist() == [2.0] * 3
    assert f"warning: skipping {step_1}" in capsys.readouterr().err
    assert os.path.isdir(step_1)
    with pytest.raises(UserError, match=r"no checkpoint for step 1 .*complete ones: 2, 3"):
        loading.load_params(workdir, 1)
    # The training run skips and removes it; no folder of deletions is left behind.
    with checkpoint.Checkpointer(workdir, 1) as ckpt:
        assert ckpt.steps() == [2, 3] and ckpt.resume_point(config.to_dict()).step == 3
        ckpt.save(4, small_tree(4), run_meta(config, 4))
    assert "removing it" in capsys.readouterr().err
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]


def test_a_reader_tolerates_a_checkpoint_deleted_while_it_reads(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (small_tree(1), 1.0), 2: (small_tree(2), None),
                                 3: (small_tree(3), 0.5)}, keep=3)
    ckdir = os.path.join(workdir, "checkpoints")
    shutil.move(os.path.join(ckdir, "3"), str(tmp_path / "3"))
    real_metadata, calls = ocp.CheckpointManager.item_metadata, []

    def training_run_moves_on(self, step):
        # Between the reader's choice of the best (step 1) and its read, the
        # training run saves a better step 3 and deletes step 1.
        if not calls:
            shutil.move(str(tmp_path / "3"), os.path.join(ckdir, "3"))
            shutil.rmtree(os.path.join(ckdir, "1"))
        calls.append(step)
        return real_metadata(self, step)

    monkeypatch.setattr(ocp.CheckpointManager, "item_metadata", training_run_moves_on)
    params, _, _ = loading.load_params(workdir, "best")
    assert params["w"].tolist() == [3.0] * 3


def test_a_reader_reads_again_when_the_keep_policy_deletes_during_its_open(
        tmp_path, monkeypatch):
    # Orbax lists the step folders, then reads each one's files: a step the
    # training run deletes in between fails the open ("No such file").
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (small_tree(1), None), 2: (small_tree(2), None)}, keep=3)
    ckdir = os.path.join(workdir, "checkpoints")
    real_open, opened = loading.open_manager, []

    def keep_policy_deletes_step_1(directory, *args):
        opened.append(directory)
        if len(opened) == 1:
            shutil.move(os.path.join(ckdir, "1"), str(tmp_path / "1"))
            raise UserError(f"cannot read the checkpoints in {directory}: [Errno 2] No such "
                            f"file or directory: '{ckdir}/1/_CHECKPOINT_METADATA'")
        return real_open(directory, *args)

    monkeypatch.setattr(loading, "open_manager", keep_policy_deletes_step_1)
    assert loading.load_params(workdir)[0]["w"].tolist() == [2.0] * 3
    assert len(opened) == 2

    def damaged(directory, *args):  # A fault that stays put is not read again and again.
        opened.append(directory)
        raise UserError("cannot read the checkpoints")

    monkeypatch.setattr(loading, "open_manager", damaged)
    with pytest.raises(UserError, match="cannot read the checkpoints"):
        loading.load_params(workdir)
    assert len(opened) == 3  # Once: nothing changed in the folder meanwhile.


def test_unreadable_or_incomplete_metadata_is_one_error_that_names_the_cause(
        tmp_path, monkeypatch):
    import json
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (small_tree(1), None), 2: (small_tree(2), None)})
    ckdir = os.path.join(workdir, "checkpoints")
    meta_path = os.path.join(ckdir, "2", "meta", "metadata")
    with open(meta_path) as f:
        meta = json.load(f)
    del meta["tokenizer"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(UserError, match=r"checkpoints/2 has no smallgpt_jax metadata .*"
                                        r"complete ones: 1\)"):
        loading.load_params(workdir)
    # Files the user may not read are a permission problem, not damage.
    real_open, real_listdir = open, os.listdir

    def no_permission(path, *args, **kwargs):
        if str(path).endswith("_CHECKPOINT_METADATA"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_permission)
    with pytest.raises(UserError, match=r"cannot be read \(_CHECKPOINT_METADATA cannot be read "
                                        r"\(permission denied\).*fix its files' permissions"):
        loading.load_params(workdir, 1)
    monkeypatch.setattr("builtins.open", real_open)
    monkeypatch.setattr(os, "listdir", lambda path: (
        (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied", path))
        if path == ckdir else real_listdir(path)))
    with pytest.raises(UserError, match=rf"cannot read {ckdir} \(Permission denied\); fix its "
                                        "permissions"):
        loading.load_params(workdir)


def test_a_failed_save_suggests_free_disk_space_only_when_the_disk_is_full(tmp_path):
    def save_failed(e):
        return faults.not_saved(str(tmp_path / "run"), 4, faults.reason(e), complete=[])

    full = save_failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    denied = save_failed(PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    other = save_failed(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))
    assert "Free disk space, then run the same command again" in full
    assert "Fix the directory's permissions" in denied and "disk space" not in denied
    assert "Fix the cause" in other and "disk space" not in other


def test_an_orbax_error_is_shortened_to_one_line_that_names_the_file():
    # TensorStore's message as a real chmod 000 data file gives it (path shortened).
    spec = '{"driver": "zarr", "kvstore": {"path": "/run/checkpoints/2/state/"}}' * 20
    error = ValueError(
        'PERMISSION_DENIED: Error opening "zarr" driver: Error reading "step/.zarray" in OCDBT '
        'database at local file "/run/checkpoints/2/state/": Error reading Byte range [0, 238) '
        'of local file "/run/checkpoints/2/state/d/51c7": Failed to open: '
        f'"/run/checkpoints/2/state/d/51c7": Permission denied [os_error_code=\'13\'] '
        f"[tensorstore_spec='{spec}']\nmore detail")
    short = faults.reason(error)
    assert short == ('PERMISSION_DENIED: "/run/checkpoints/2/state/d/51c7": Permission denied')
    assert faults.denied([short])  # Advice: fix permissions, not "move it away".
    # Other errors keep their whole first line, up to 300 characters.
    assert faults.reason(OSError(28, "No space left on device")) == (
        "[Errno 28] No space left on device")
    assert faults.reason(RuntimeError("x" * 400)) == "x" * 300 + "..."
