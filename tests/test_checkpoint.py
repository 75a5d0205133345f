"""Checkpoints: bit-exact save/restore, keep-N plus best, faults, bad input,
and a real process killed with SIGKILL (during a save) and SIGTERM, whose
resumed losses and final parameters equal an uninterrupted run's."""

import errno
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT, tiny_config
from smallgpt_jax import train
from smallgpt_jax.checkpoint import writer as checkpoint, reader as loading
from smallgpt_jax.checkpoint.meta import Meta
from smallgpt_jax.checkpoint.workdir import prepare_workdir
from smallgpt_jax.model import model_config
from smallgpt_jax.system.errors import Interrupted, UserError
from smallgpt_jax.tokenizers.tokenizer import CharTokenizer
from smallgpt_jax.training import loop, profiling
from test_cli import read_events

TOK = CharTokenizer("\n .abcdefghijklmnopqrstuvwxyz")


def write_corpus(path, n_words=3000):
    """Deterministic word soup over TOK's characters, long enough for tiny runs."""
    rng = np.random.default_rng(0)
    words = ["the", "of", "and", "to", "in", "is", "was", "for", "with", "as", "his",
             "on", "be", "at", "by", "this", "had", "not", "are", "but", "from", "or",
             "have", "an", "they", "which", "one", "you", "were", "her", "all", "she"]
    text = " ".join(words[i] + (".\n" if i % 7 == 0 else "")
                    for i in rng.integers(0, len(words), n_words))
    path.write_text(text)
    return str(path)


def fresh_state(config):
    tx, _ = train.make_optimizer(config.train)
    return train.init_state(model_config(config.model, TOK.vocab_size), tx, config.seed)


def perturbed_state(config):
    """A TrainState whose every leaf (params, Adam moments, counters) holds
    distinct non-trivial values, so a round trip has something to prove."""
    state = fresh_state(config)
    rng = np.random.default_rng(1)
    return jax.tree.map(
        lambda x: x + rng.standard_normal(x.shape).astype(x.dtype)
        if np.issubdtype(x.dtype, np.floating) else x + 7, state)


def small_tree(step):
    """A stand-in state for tests of which checkpoints are kept."""
    return {"params": {"w": np.full(3, step, np.float32)}, "step": np.array(step, np.int32)}


def on_disk(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(e) for e in os.listdir(d) if e.isdigit())


def save_steps(workdir, config, states, keep=2):
    """Saves {step: (state, val_loss)} through a Checkpointer, as the loop does."""
    prepare_workdir(workdir)
    with checkpoint.Checkpointer(workdir, keep) as ckpt:
        best = np.inf
        for step, (state, val) in states.items():
            best = min(best, val) if val is not None else best
            ckpt.save(step, state, run_meta(config, step, best, val))


def run_meta(config, step, best=np.inf, val=None):
    """A Meta as the loop's saves make it."""
    return Meta(step=step, seed=config.seed, config=config.to_dict(), tokenizer=TOK.to_dict(),
                best_val_loss=best, val_loss=val)


def assert_trees_identical(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_save_restore_round_trip_is_bit_exact(tmp_path):
    config = tiny_config()
    state = perturbed_state(config)
    workdir = str(tmp_path / "run")
    save_steps(workdir, config, {7: (state, 1.25)})
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        resume = ckpt.resume_point(config.to_dict())
        assert resume.step == 7 and resume.best_val_loss == 1.25
        assert resume.meta.seed == config.seed and resume.meta.step == 7
        assert resume.meta.config == config.to_dict()
        assert resume.tokenizer.to_dict() == TOK.to_dict()  # The data is encoded with it.
        restored = ckpt.restore_state(resume, fresh_state(config))
    assert_trees_identical(restored, state)
    assert int(restored.step) == int(state.step)
    # Parameters alone, for sampling: same bits, same model config and vocabulary.
    params, mc, tok = loading.load_params(workdir)
    assert_trees_identical(params, state.params)
    assert mc == model_config(config.model, TOK.vocab_size)
    assert tok.to_dict() == TOK.to_dict()


def test_keeps_the_newest_n_plus_the_best(tmp_path):
    config, workdir = tiny_config(), str(tmp_path / "run")
    vals = {1: 5.0, 2: 2.0, 3: 4.0, 4: None, 5: 3.0, 6: None}
    save_steps(workdir, config, {s: (small_tree(s), v) for s, v in vals.items()})
    assert on_disk(workdir) == [2, 5, 6]  # Newest two, plus the best (val loss 2.0).
    params, _, _ = loading.load_params(workdir, "best")
    assert params["w"].tolist() == [2.0] * 3
    assert loading.load_params(workdir, 5)[0]["w"].tolist() == [5.0] * 3
    # A later process (a resumed run) still knows which one is the best...
    save_steps(workdir, config, {7: (small_tree(7), None)})
    assert on_disk(workdir) == [2, 6, 7]
    # ...until a better one arrives.
    save_steps(workdir, config, {8: (small_tree(8), 1.0), 9: (small_tree(9), None)})
    assert on_disk(workdir) == [8, 9]
    with pytest.raises(UserError, match=r"no checkpoint for step 2 .*complete ones: 8, 9"):
        loading.load_params(workdir, 2)


def test_a_resume_restores_onto_the_placement_its_target_names(tmp_path):
    """Each array of the restore target may name its sharding (a sharded
    state's); shapes that name none go onto the first local device."""
    config, workdir = tiny_config(), str(tmp_path / "run")
    state = perturbed_state(config)
    save_steps(workdir, config, {3: (state, None)})
    named = jax.NamedSharding(jax.make_mesh((1,), ("d",)), jax.P())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=named),
                          state)
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        resume = ckpt.resume_point(config.to_dict())
        placed = ckpt.restore_state(resume, target)
        plain = ckpt.restore_state(resume, jax.eval_shape(lambda: state))
    assert {x.sharding for x in jax.tree.leaves(placed)} == {named}
    assert {x.sharding for x in jax.tree.leaves(plain)} == {
        jax.sharding.SingleDeviceSharding(jax.local_devices()[0])}
    assert_trees_identical(placed, state)


def test_resume_step_that_does_not_exist_lists_the_ones_that_do(tmp_path):
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {3: (small_tree(3), None), 6: (small_tree(6), None)})
    config.train.resume_step = 4
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        with pytest.raises(UserError, match=r"resume_step=4: .*complete ones: 3, 6"):
            ckpt.resume_point(config.to_dict())


def train_config(corpus, **overrides):
    """An even tinier model on the generated corpus, without text samples:
    these tests are about the loop around the model, so compile it fast."""
    return tiny_config(**{"data.path": corpus, "train.sample_tokens": 0,
                          "model.num_layers": 1, "model.embed_dim": 16, "model.block_size": 8,
                          "train.batch_size": 4, **overrides})


def test_a_nan_stops_training_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")
    # A learning rate this large blows the parameters up within a few steps.
    config = train_config(corpus, **{
        "train.learning_rate": 1e8, "train.warmup_steps": 0, "train.grad_clip": 0.0,
        "train.checkpoint_every": 1, "train.log_every": 100, "train.eval_every": 100,
        "train.num_steps": 30})
    with pytest.raises(UserError, match=r"training diverged at step (\d+): ") as e:
        loop.train_and_evaluate(config, workdir)
    bad = int(e.value.args[0].split("step ")[1].split(":")[0])
    message = str(e.value)
    assert "last finite loss" in message and f"newest checkpoint is step {bad - 1}" in message
    # A checkpoint every step, yet none from the broken state: the newest is the last good one.
    assert on_disk(workdir)[-1] == bad - 1
    params, _, _ = loading.load_params(workdir)
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp
    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")
    config = train_config(corpus, **{"train.checkpoint_every": 2, "train.keep_checkpoints": 1,
                                     "train.log_every": 1, "train.num_steps": 1000,
                                     "train.eval_every": 1000})
    real_write = ocp.JsonCheckpointHandler._save_fn

    async def disk_full_from_step_4(self, item, directory):
        if isinstance(item, dict) and item.get("step", 0) >= 4:  # Our `meta` item.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return await real_write(self, item, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", disk_full_from_step_4)
    with pytest.raises(UserError, match=r"could not write checkpoint step 4 .*No space left on "
                                        r"device.*newest complete checkpoint is step 2"):
        loop.train_and_evaluate(config, workdir)
    # keep_checkpoints=1, yet step 2 was not deleted for the save that failed.
    assert on_disk(workdir) == [2]
    params, _, _ = loading.load_params(workdir)
    assert jax.tree.leaves(params)


def test_a_full_disk_under_the_tensorboard_logs_stops_the_run_with_one_error(
        tmp_path, monkeypatch):
    # tensorboardX's own writer thread died on such an error, and the loop
    # then blocked forever on its full queue.
    from tensorboardX import record_writer
    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")
    config = train_config(corpus, **{"train.checkpoint_every": 2, "train.log_every": 1,
                                     "train.num_steps": 1000, "train.eval_every": 1000})
    real_write, writes = record_writer.RecordWriter.write, []

    def disk_full_after_30_writes(self, data):
        writes.append(len(data))
        if len(writes) > 30:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", disk_full_after_30_writes)
    with pytest.raises(UserError, match=r"cannot write TensorBoard logs in .*\(No space left on "
                                        r"device\); free disk space"):
        loop.train_and_evaluate(config, workdir)
    assert on_disk(workdir) and on_disk(workdir)[-1] < 1000  # It stopped early, saved before.
    params, _, _ = loading.load_params(workdir)
    assert jax.tree.leaves(params)


def test_a_full_disk_at_start_up_is_one_error_naming_the_file(tmp_path, monkeypatch):
    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")

    real_open = open

    def disk_full_for_the_tokenizer(path, *args, **kwargs):
        if str(path).startswith(os.path.join(workdir, "tokenizer.json")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", disk_full_for_the_tokenizer)
    with pytest.raises(UserError, match=r"cannot write .*run/tokenizer.json \(No space left"):
        loop.train_and_evaluate(train_config(corpus), workdir)


def test_sigterm_saves_a_final_checkpoint_and_stops(tmp_path):
    import threading
    from smallgpt_jax.system.errors import Interrupted
    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")
    config = train_config(corpus, **{"train.checkpoint_every": 3, "train.log_every": 1,
                                     "train.num_steps": 1000, "train.eval_every": 1000})

    def send_sigterm_after_first_checkpoint():
        while not (os.path.isdir(os.path.join(workdir, "checkpoints"))
                   and on_disk(workdir)):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # A real signal, as a scheduler sends it.

    threading.Thread(target=send_sigterm_after_first_checkpoint, daemon=True).start()
    with pytest.raises(Interrupted) as e:
        loop.train_and_evaluate(config, workdir)
    stopped = int(str(e.value).split("at step ")[1].split(",")[0])
    assert e.value.signum == signal.SIGTERM and "run the same command again" in str(e.value)
    assert stopped in on_disk(workdir) and stopped > 3 - 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Handler put back.


class SignalAt(profiling.Hooks):
    """Sends this process `signum` as step `step` is launched: a real signal, mid-run."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = step, signum

    def step_launched(self, step, metrics):
        if step == self.step:
            os.kill(os.getpid(), self.signum)


def test_a_signal_before_the_first_step_stops_at_once(tmp_path, monkeypatch):
    # A long setup (here: the evaluation batches) that never asks about signals.
    from smallgpt_jax.training import evaluation
    real, slow = evaluation.eval_batches, []

    def slow_eval_batches(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(300):  # 3 s, then on: a run that ignored the signal goes on.
            slow.append(time.sleep(0.01))
        return real(*args)

    monkeypatch.setattr(evaluation, "eval_batches", slow_eval_batches)
    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM before training started; "
                                          r"nothing new to save: run the same command again"):
        loop.train_and_evaluate(train_config(corpus), workdir)
    assert len(slow) < 300 and on_disk(workdir) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.fixture
def sighup_not_handled():
    """SIGHUP's handler outside a run: an error (its default would end pytest)."""
    def not_handled(signum, frame):
        raise AssertionError("SIGHUP reached the handler outside the run")

    previous = signal.signal(signal.SIGHUP, not_handled)
    yield not_handled
    signal.signal(signal.SIGHUP, previous)


def test_the_same_resume_step_command_again_continues_and_deletes_nothing(
        tmp_path, capsys, sighup_not_handled):
    """resume_step goes back once: the printed 'run the same command again'
    continues that run; it neither deletes its checkpoints nor starts over.
    (Stopped by SIGHUP, a closed terminal: saved and said, as for SIGTERM.)"""
    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")

    def config(**overrides):
        return train_config(corpus, **{"train.checkpoint_every": 2, "train.log_every": 1,
                                       "train.eval_every": 100, "train.keep_checkpoints": 20,
                                       **overrides})

    loop.train_and_evaluate(config(**{"train.num_steps": 8}), workdir)
    assert on_disk(workdir) == [2, 4, 6, 8]
    branch = {"train.num_steps": 12, "train.resume_step": 4}
    with pytest.raises(Interrupted, match=r"stopped by SIGHUP at step 7, after saving "
                                          r"checkpoint .*/7; run the same command again"):
        loop.train_and_evaluate(config(**branch), workdir, SignalAt(7, signal.SIGHUP))
    assert signal.getsignal(signal.SIGHUP) is sighup_not_handled  # Put back.
    assert on_disk(workdir) == [2, 4, 6, 7]  # 6 and 8 of the first run went; 6 is new.
    capsys.readouterr()
    loop.train_and_evaluate(config(**branch), workdir)  # The same command again.
    err = capsys.readouterr().err
    assert "resuming from checkpoint step 7" in err and "deleting" not in err, err
    assert on_disk(workdir) == [2, 4, 6, 7, 8, 10, 12]
    # Once more, with step 4 gone (a keep policy deletes it): nothing to do, nothing lost.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    assert loop.train_and_evaluate(config(**branch), workdir).steps == 12
    assert "continuing its checkpoints from step 12" in capsys.readouterr().err
    # Other settings with the same step: going back again would delete that work.
    with pytest.raises(UserError, match=r"resume_step=4: the checkpoints after step 4 .*"
                                        r"trained from step 4 already, with other settings "
                                        r"\(train.learning_rate: .*leave resume_step out"):
        loop.train_and_evaluate(config(**branch, **{"train.learning_rate": 0.5}), workdir)
    assert on_disk(workdir) == [2, 6, 7, 8, 10, 12]


def test_cli_exits_with_128_plus_signal_after_an_interrupt(capsys):
    from smallgpt_jax.cli import app as cli
    from smallgpt_jax.system.errors import Interrupted
    with pytest.raises(SystemExit) as e:
        with cli.user_errors():
            raise Interrupted("stopped by SIGTERM at step 7, after saving checkpoint x/7; "
                              "run the same command again to resume.", signal.SIGTERM)
    assert e.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.startswith("stopped by SIGTERM at step 7")


def read_losses(event_file):
    """{step: train/loss} exactly as one process wrote them."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    out = {}
    for raw in RawEventFileLoader(event_file).Load():
        event = event_pb2.Event.FromString(raw)
        for value in event.summary.value:
            if value.tag == "train/loss":
                out[event.step] = value.simple_value
    return out


def start_cli(args, log_path, devices=2):
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "smallgpt_jax.main", *args], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def test_sigkill_during_a_save_then_resume_matches_an_uninterrupted_run(tmp_path):
    """The bar: on CPU with the same device count, a run killed with SIGKILL
    while a checkpoint is being written, then resumed, logs the same loss at
    every step after the resume and ends with the same parameters, bit for bit."""
    corpus = write_corpus(tmp_path / "text.txt")
    steps = 24

    def args(workdir):
        # Dropout on, so the dropout keys derived from (seed, step) must match too;
        # a checkpoint every step, so a save is almost always in flight.
        return ["--config=configs/char_cpu.py", f"--workdir={workdir}",
                f"--config.data.path={corpus}", "--config.model.num_layers=1",
                "--config.model.num_heads=2", "--config.model.embed_dim=16",
                "--config.model.block_size=8", "--config.model.dropout=0.1",
                "--config.train.batch_size=4", f"--config.train.num_steps={steps}",
                "--config.train.warmup_steps=3", "--config.train.log_every=1",
                f"--config.train.eval_every={steps}", "--config.train.eval_steps=1",
                "--config.train.sample_tokens=0", "--config.train.checkpoint_every=1"]

    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    # All three runs share the test session's JAX compilation cache (see
    # conftest.py), so a later process may reuse what an earlier one compiled.
    reference = start_cli(args(whole), tmp_path / "whole.log")  # Runs alongside.
    ckdir = os.path.join(killed, "checkpoints")
    for attempt in range(3):  # The save can, rarely, finish between look and kill.
        shutil.rmtree(killed, ignore_errors=True)
        victim = start_cli(args(killed), tmp_path / "killed.log")
        deadline = time.time() + 240
        while time.time() < deadline and victim.poll() is None:
            names = os.listdir(ckdir) if os.path.isdir(ckdir) else []
            done = [n for n in names if n.isdigit()]
            saving = [n for n in names if ".orbax-checkpoint-tmp" in n]
            if done and saving and max(map(int, done)) < steps - 5:
                victim.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        assert victim.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
        cut_off = [n for n in os.listdir(ckdir) if ".orbax-checkpoint-tmp" in n]
        if cut_off:
            break
    assert cut_off, "three kills in a row missed the save they aimed at"
    events_before = set(glob.glob(os.path.join(killed, "events.out.tfevents.*")))

    resumed = start_cli(args(killed), tmp_path / "resumed.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    assert reference.wait(timeout=300) == 0, (tmp_path / "whole.log").read_text()
    log = (tmp_path / "resumed.log").read_text()
    assert f"skipping incomplete checkpoint {os.path.join(ckdir, cut_off[0])}" in log, log
    start = int(log.split("resuming from checkpoint step ")[1].split()[0])
    assert 1 <= start < steps

    # The resumed process's own losses, step by step, against the uninterrupted run's.
    (new_file,) = set(glob.glob(os.path.join(killed, "events.out.tfevents.*"))) - events_before
    after = read_losses(new_file)
    (whole_file,) = glob.glob(os.path.join(whole, "events.out.tfevents.*"))
    reference_losses = read_losses(whole_file)
    assert sorted(reference_losses) == list(range(1, steps + 1))
    assert sorted(after) == list(range(start + 1, steps + 1))
    assert after == {s: reference_losses[s] for s in after}
    # TensorBoard's merged view drops what the killed process logged past the resume.
    assert read_events(killed)[0]["train/loss"] == sorted(reference_losses.items())
    # Final parameters, bit for bit.
    (p_whole, _, _), (p_resumed, _, _) = (loading.load_params(whole),
                                         loading.load_params(killed))
    assert_trees_identical(p_resumed, p_whole)


# --- Nothing lost: half-deleted folders, concurrent readers, flipped bits, one run per workdir.


def test_a_second_run_on_a_workdir_is_refused_at_once_naming_the_holder(tmp_path):
    import socket
    from smallgpt_jax.system import lock
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with lock.hold(workdir):  # The first run (here: this process, another open file).
        holder = f"PID {os.getpid()} on host {socket.gethostname()}"
        assert lock.holder(workdir) == holder
        with pytest.raises(UserError, match=rf"--workdir={workdir} is in use by another run "
                                            rf"\({holder}\)"):
            loop.train_and_evaluate(tiny_config(), workdir)
    assert lock.holder(workdir) is None
    # The kernel drops the lock of a process that dies, even by SIGKILL.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from smallgpt_jax.system import lock\n"
         f"with lock.hold({workdir!r}): print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert lock.holder(workdir) == f"PID {holder.pid} on host {socket.gethostname()}"
    holder.kill()
    holder.wait()
    assert lock.holder(workdir) is None


def test_summary_follows_the_final_checkpoint_and_a_rerun_rewrites_a_lost_one(
        tmp_path, monkeypatch):
    import json
    import orbax.checkpoint as ocp
    from smallgpt_jax.training import reporting
    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")
    config = train_config(corpus, **{"train.num_steps": 6, "train.eval_every": 6,
                                     "train.log_every": 3, "train.checkpoint_every": 3})
    real_save, real_write = ocp.JsonCheckpointHandler._save_fn, reporting.write_json

    async def slow_final_save(self, item, directory):
        if isinstance(item, dict) and item.get("step") == 6:
            time.sleep(1.0)  # A slow disk: the final save is still in flight for a while.
        return await real_save(self, item, directory)

    def write_json(path, obj):
        if path.endswith("summary.json"):
            assert 6 in on_disk(workdir), "summary.json before the final checkpoint"
        return real_write(path, obj)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", slow_final_save)
    monkeypatch.setattr(reporting, "write_json", write_json)
    loop.train_and_evaluate(config, workdir)
    summary_path = os.path.join(workdir, "summary.json")
    with open(summary_path) as f:
        first = json.load(f)
    tokenizer_path = os.path.join(workdir, "tokenizer.json")
    with open(tokenizer_path) as f:
        tokenizer = json.load(f)
    # A kill right after the final checkpoint: summary.json is missing. The rerun
    # trains nothing and writes it again, with the same numbers; the tokenizer's
    # copy, lost too, comes back from the checkpoint.
    os.remove(summary_path)
    os.remove(tokenizer_path)
    loop.train_and_evaluate(config, workdir)
    with open(tokenizer_path) as f:
        assert json.load(f) == tokenizer
    with open(summary_path) as f:
        again = json.load(f)
    assert first["steps"] == again["steps"] == 6
    for key in ("eval/best_val_loss", "eval/val_loss", "eval/train_loss", "eval/val_bpc"):
        assert again[key] == first[key], key


