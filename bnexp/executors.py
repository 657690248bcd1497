"""Executors: where the runs of a sweep train. One after another in this process, in worker
processes on this machine, or as Ray tasks on a cluster.

An executor is a function `(runs, context) -> iterator of (RunSpec, result record)` that yields each
run as it ends. A worker imports the Keras backend once and trains many runs; each run's data order
and initial weights depend only on its seed, so a run trains the same whichever worker takes it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import multiprocessing
import os
import queue
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bnexp.errors import BnexpError, ConfigError
from bnexp.machine import keras_backend, physical_memory
from bnexp.store import FAILED, RUNNING, RunLocked, open_run, pack_run, run_dir, run_lock, unpack_run
from bnexp.sweep import RunSpec

# A worker's epoch records reach the driver through this queue (set in each worker process).
_epoch_queue: multiprocessing.Queue | None = None
_threads_set = False
# The driver's settings a Ray task needs: the Keras backend, and JAX's share of a shared GPU.
FORWARDED_ENV = ("KERAS_BACKEND", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")
# A Ray task whose node (or worker process) is lost is submitted again, at most this many times;
# the driver counts the tries in the run's record under RETRIED, for the sweep's summary.
RAY_RETRIES, RETRIED = 3, "retried"
# Ray itself retries an unreachable cluster for 30 s to 80 s and then raises a traceback; a head
# node that is up answers a TCP connection within milliseconds.
RAY_CONNECT_TIMEOUT = 5.0


@dataclass
class RunContext:
    """What every run of a sweep shares, whichever executor trains it."""

    results_dir: Path
    data_dir: Path | None
    tensorboard: bool = False
    on_epoch: Callable[[RunSpec, dict], None] | None = None

    def run_dir(self, spec: RunSpec) -> Path:
        return run_dir(self.results_dir, spec.experiment, spec.run_id)


Executor = Callable[[list[RunSpec], RunContext], Iterator[tuple[RunSpec, dict]]]


class NotTrained(dict):
    """What this process made of a run it did not train, in place of a result record and never written
    to disk: {"status": the run's status when its turn came}, in bnexp.store's words. `running`:
    another process holds it; `completed` or `diverged`: another process completed it since this
    sweep was planned."""

    @property
    def reason(self) -> str:
        return ("another bnexp process is training it" if self["status"] == RUNNING
                else "another bnexp process completed it")


# `bnexp status` takes a run's lock for an instant to see whether it is held; waiting this long
# keeps such a look from making a sweep skip the run.
LOCK_WAIT = 1.0


@contextlib.contextmanager
def claim_run(run_dir: Path) -> Iterator[NotTrained | None]:
    """Hold the run's lock while the caller trains it; yields None when the run is this process's to
    train, else the record saying why not (NotTrained).

    Holding the lock while training is what lets several `bnexp run` share a results folder: a run
    locked by another process, or completed by one since this sweep was planned, is not trained again.
    """
    try:
        with run_lock(run_dir, wait=LOCK_WAIT):
            run = open_run(run_dir)
            yield NotTrained(status=run.result["status"]) if run.is_complete else None
    except RunLocked:
        yield NotTrained(status=RUNNING)


def train_one(spec: RunSpec, context: RunContext) -> dict:
    """Claim and train one run into its folder: what every executor calls for a run that trains
    where its results are stored."""
    from bnexp.sweep import check_unchanged
    from bnexp.train import train_run

    check_unchanged(spec, context.data_dir)
    run_dir = context.run_dir(spec)
    with claim_run(run_dir) as not_trained:
        if not_trained:
            return not_trained
        return train_run(spec, run_dir, context.data_dir,
                         tensorboard=context.tensorboard, on_epoch=context.on_epoch)


def run_sequential(runs: list[RunSpec], context: RunContext) -> Iterator[tuple[RunSpec, dict]]:
    """Train the runs one after another in this process."""
    for spec in runs:
        yield spec, train_one(spec, context)


def check_executor_options(executor: str | None, workers: int | None, address: str | None,
                           cpus_per_run: float | None, gpus_per_run: float | None) -> str:
    """The executor the `run` options name (None: ray with an address, else processes); ConfigError
    for an option the chosen executor would ignore, so each option given has its effect. None is an
    option not given."""
    executor = executor or ("ray" if address is not None else "processes")
    if address is not None and not is_ray_address(address):
        raise ConfigError(f"--address {address!r}: expected a Ray cluster's HOST:PORT (head:6379), "
                          "ray://HOST:PORT (ray://head:10001) or auto (the cluster this machine joined)")
    if workers is not None and workers != 1 and executor == "sequential":
        raise ConfigError(f"--executor sequential -j {workers}: sequential trains one run at a time in this process; "
                          f"drop -j, or use --executor processes -j {workers}")
    if workers is not None and executor == "ray":
        raise ConfigError(f"-j {workers}: Ray runs as many runs at once as the cluster offers CPUs and GPUs for; "
                          "drop -j and set --cpus-per-run / --gpus-per-run")
    if address is not None and executor != "ray":
        raise ConfigError(f"--executor {executor} --address {address}: only Ray connects to an address; "
                          "drop --executor (--address alone means Ray) or drop --address")
    for option, value in (("--cpus-per-run", cpus_per_run), ("--gpus-per-run", gpus_per_run)):
        if executor != "ray" and value is not None:
            raise ConfigError(f"{option} {value:g}: only Ray tasks ask for CPUs and GPUs, not --executor {executor}; "
                              f"add --executor ray (or --address ADDR), or drop {option}")
    return executor


def is_ray_address(address: str) -> bool:
    """auto, HOST:PORT or ray://HOST:PORT with a port from 1 to 65535 (an IPv6 host in brackets)."""
    if address == "auto":
        return True
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return bool(colon and host and port.isdigit() and 0 < int(port) < 65536
                and not any(c in host for c in "/@?# ") and (":" not in host or address.count("[") == 1))


def make_executor(name: str, workers: int | None = None, address: str | None = None,
                  cpus_per_run: float | None = None, gpus_per_run: float | None = None) -> Executor:
    """The executor `name` (processes, sequential or ray) with its options; Ray connects and checks its
    cluster here."""
    if name == "ray":
        return run_ray(address, cpus_per_run, gpus_per_run)
    if name == "sequential" or workers == 1:
        return run_sequential
    return run_processes(workers)


def check_tensorboard() -> None:
    """Raise BnexpError when `--tensorboard` cannot write logs: Keras writes them with tf.summary,
    whose implementation TensorFlow leaves to the separate tensorboard package."""
    try:
        import tensorboard  # noqa: F401  (its package is lazy: about 2 ms)
    except ImportError:
        raise BnexpError("--tensorboard: the tensorboard package is not installed; pip install tensorboard "
                         "(bnexp depends on it: reinstalling bnexp adds it), or run without --tensorboard") from None


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(runs: int) -> int:
    """One single-threaded worker per CPU, no more than the runs: the small models of these
    experiments keep one core busy each far better than they share several. A worker holds its
    backend and a copy of the data, so at most one per 1.5 GiB of memory."""
    memory = physical_memory()
    by_memory = int(memory // (1.5 * 2**30)) if memory else runs
    return max(1, min(available_cpus(), runs, by_memory))


def set_backend_threads(threads: int) -> None:
    """Give this process's Keras backend `threads` intra-op and inter-op threads.

    Must run before the backend runs its first op; later calls in the same process do nothing.
    """
    global _threads_set
    if _threads_set:
        return
    _threads_set = True
    os.environ["OMP_NUM_THREADS"] = str(threads)
    backend = keras_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif backend == "jax":
        if threads == 1:
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)


def _exit_with_parent(parent: int) -> None:
    """Poll for the driver's death: a SIGKILL leaves it no chance to stop its workers, and a worker
    training on would keep its run locked, so the next `bnexp run` would skip that run."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _init_worker(threads: int, workers: int, epoch_queue) -> None:
    global _epoch_queue
    _epoch_queue = epoch_queue
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    # Workers sharing a GPU must not each take most of its memory, as JAX and TensorFlow do by default.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{min(0.75, 0.9 / workers):.3f}")
    set_backend_threads(threads)
    if keras_backend() == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    import keras  # noqa: F401  (once per worker, not once per run)


def _train_in_worker(spec: RunSpec, context: RunContext) -> dict:
    context.on_epoch = (lambda s, record: _epoch_queue.put((s.run_id, record))) if _epoch_queue else None
    return train_one(spec, context)


def run_processes(workers: int | None = None) -> Executor:
    """An executor training runs in `workers` spawned processes (default: default_workers)."""

    def execute(runs: list[RunSpec], context: RunContext) -> Iterator[tuple[RunSpec, dict]]:
        if not runs:
            return
        count = min(workers or default_workers(len(runs)), len(runs))
        if count == 1:  # a worker process would only add its start-up
            yield from run_sequential(runs, context)
            return
        threads = max(1, available_cpus() // count)
        spawn = multiprocessing.get_context("spawn")  # fork after a backend started is unsafe
        epochs = spawn.Queue() if context.on_epoch else None
        by_id = {spec.run_id: spec for spec in runs}
        shipped = dataclasses.replace(context, on_epoch=None)
        todo = list(reversed(runs))
        with cf.ProcessPoolExecutor(count, mp_context=spawn, initializer=_init_worker,
                                    initargs=(threads, count, epochs)) as pool:
            # Only `count` runs in flight: nothing queued behind them to cancel on Ctrl-C, and runs
            # start in the sweep's order.
            running: dict[cf.Future, RunSpec] = {}
            try:
                while todo or running:
                    while todo and len(running) < count:
                        spec = todo.pop()
                        running[pool.submit(_train_in_worker, spec, shipped)] = spec
                    done, _ = cf.wait(running, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                    _forward_epochs(epochs, by_id, context.on_epoch)
                    for future in done:
                        yield running.pop(future), future.result()
            except BaseException:
                # Ctrl-C in a terminal reaches the workers too, but a SIGINT or an error in this process
                # alone must not wait for their runs to end: each resumes from its last epoch next time.
                for process in list(pool._processes.values()):
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                _forward_epochs(epochs, by_id, context.on_epoch)

    return execute


def _forward_epochs(epochs, by_id: dict[str, RunSpec], on_epoch: Callable | None) -> None:
    while epochs is not None:
        try:
            run_id, record = epochs.get_nowait()
        except queue.Empty:
            return
        on_epoch(by_id[run_id], record)


def run_ray(address: str | None = None, cpus_per_run: float | None = None, gpus_per_run: float | None = None
            ) -> Executor:
    """An executor training each run as a Ray task, asking for `cpus_per_run` (default 1: one training
    thread) and `gpus_per_run` (default 0), on the cluster at `address` (None: the running instance,
    $RAY_ADDRESS, or a new local one). It connects now, so an unreachable cluster or one without a node
    that has what a run asks for is an error before anything is written.

    A task trains in a scratch folder on its node and returns the run's files; the driver holds
    the run's lock meanwhile and writes them into the results folder, so the nodes need the data
    but no shared file system. A run interrupted before its task returned starts over; so does a run
    whose node is lost (up to RAY_RETRIES times), which nothing of the lost try reaches the results folder.
    """
    cpus_per_run = 1 if cpus_per_run is None else cpus_per_run
    gpus_per_run = 0 if gpus_per_run is None else gpus_per_run
    try:
        import ray
    except ImportError:
        raise BnexpError("--executor ray needs Ray: pip install 'bnexp[ray]'") from None
    if not ray.is_initialized():
        _connect_ray(ray, address)
    _check_ray_resources(ray, cpus_per_run, gpus_per_run)

    def execute(runs: list[RunSpec], context: RunContext) -> Iterator[tuple[RunSpec, dict]]:
        if not runs:
            return
        # A cluster's workers start with their node's environment, not the driver's.
        env_vars = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        # max_retries=0: the driver, not Ray, submits a lost run again, so it can count the tries.
        task = ray.remote(_train_remote).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0,
                                                 **({"runtime_env": {"env_vars": env_vars}} if env_vars else {}))
        threads = max(1, int(cpus_per_run))
        shipped = dataclasses.replace(context, on_epoch=None)
        pending: dict = {}  # task -> (spec, the claim on its run)
        lost: dict[str, int] = {}  # run id -> tries whose node or worker was lost
        try:
            for spec in runs:
                claim = contextlib.ExitStack()
                not_trained = claim.enter_context(claim_run(context.run_dir(spec)))
                if not_trained:
                    claim.close()
                    yield spec, not_trained
                    continue
                pending[task.remote(spec, shipped, threads)] = spec, claim
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                spec, claim = pending.pop(ref)
                try:
                    result, files = ray.get(ref)
                except _lost_try_errors(ray) as error:
                    lost[spec.run_id] = lost.get(spec.run_id, 0) + 1
                    if lost[spec.run_id] <= RAY_RETRIES:
                        pending[task.remote(spec, shipped, threads)] = spec, claim
                        continue
                    claim.close()
                    yield spec, {"status": FAILED, RETRIED: lost[spec.run_id] - 1, "wall_seconds": 0.0,
                                 "error": f"lost its Ray node or worker {lost[spec.run_id]} times "
                                          f"({type(error).__name__}); the next `bnexp run` trains it again"}
                    continue
                with claim:
                    unpack_run(context.run_dir(spec), files)
                yield spec, {**result, RETRIED: lost[spec.run_id]} if spec.run_id in lost else result
        finally:
            for ref, (_, claim) in pending.items():
                ray.cancel(ref, force=True)
                claim.close()

    return execute


def _lost_try_errors(ray) -> tuple[type[BaseException], ...]:
    """What ray.get raises when a task's try was lost with its node or worker process, not failed by
    bnexp's own code: such a run is submitted again."""
    errors = ray.exceptions
    return (errors.NodeDiedError, errors.WorkerCrashedError, errors.LocalRayletDiedError, errors.ObjectLostError)


def _connect_ray(ray, address: str | None) -> None:
    """ray.init, stopping within seconds with one line when the cluster cannot be reached."""
    option = "--address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT).close()
        except OSError as error:
            local = "leave out --address" if option == "--address" else "unset RAY_ADDRESS"
            raise BnexpError(f"{option} {address}: no Ray cluster answers at {host}:{port} "
                             f"({error.strerror or error}); start one there with `ray start --head`, "
                             f"or {local} to start a local Ray") from None
    try:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    except ConnectionError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BnexpError(f"{option} {address}: cannot connect to Ray ({reason})") from None


def _check_ray_resources(ray, cpus: float, gpus: float) -> None:
    """Raise BnexpError when no node of the cluster offers what one run asks for: Ray would
    otherwise keep the tasks pending forever."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus for node in nodes):
        return
    most_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
    most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    asked = [f"--cpus-per-run {cpus:g}"] if cpus > most_cpus else []
    asked += [f"--gpus-per-run {gpus:g}"] if gpus > most_gpus else []
    asked = asked or [f"--cpus-per-run {cpus:g} with --gpus-per-run {gpus:g}"]  # each fits, not together
    raise BnexpError(f"{' and '.join(asked)}: no node of the Ray cluster offers that (the {len(nodes)} node(s) "
                     f"offer at most {most_cpus:g} CPUs and {most_gpus:g} GPUs each); ask for less, or add a "
                     "node that has it")


def _train_remote(spec: RunSpec, context: RunContext, threads: int) -> tuple[dict, dict[str, str]]:
    """A Ray task: train `spec` in a scratch folder; its result record and its records (store.pack_run).
    On a node without the data folder, a failed record naming the node and the folder, and no records."""
    if context.data_dir is not None and not Path(context.data_dir).is_dir():
        import ray

        node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
        return {"status": FAILED, "wall_seconds": 0.0,
                "error": f"Ray node {node} has no data folder {context.data_dir} (--data-dir); put the data "
                         "there on every node, or pass the folder the nodes have"}, {}
    set_backend_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bnexp-") as scratch:
        scratch_context = dataclasses.replace(context, results_dir=Path(scratch))
        result = train_one(spec, scratch_context)
        return result, pack_run(scratch_context.run_dir(spec))
