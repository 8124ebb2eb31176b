"""Where a trial's time goes: real trials of a sweep (default sweeps/demo.yaml) on the local cluster, one
alone and then two side by side, each beside the plain loop at the same threads and batch, in one run.

    make cluster-up && source .cluster/env
    .venv/bin/python bench/bench_trial_breakdown.py [--sweep sweeps/demo.yaml] [--steps 400] [--set K=V ...]

Each case runs `python -m orchestrator.sweep` on the sweep with its search replaced by run.seed 0 (one trial)
or 0 and 1 (two trials), `--steps` steps each (eval and checkpoint once, at the end; the critic on from the
first step, so trial and plain loop time the same step), in its own MLflow
experiment. A trial's wall time (its MLflow run, created before Ray starts its workers) splits into Ray's
start and stop of its workers (the run's wall less the worker's), and the worker's phases as the training loop
reports them (orchestrator/train/loop.py): setup (model build, resume, step-0 eval), train steps, data waits,
evals, checkpoints with their upload, metric sends and the rest. The plain loop is `sphere_core.train_step` on
the same config (perceptual network and critic included) on in-memory batches of the same size, at the
worker's torch threads and under its malloc (Ray's jemalloc with the workers' MALLOC_CONF:
bench_allocator.py); two plain loops run side by side for the two-trial case. Printed ratios: the trial's
training-loop images/s (its loop wall less setup and evals) over the plain loop's, and the same over the whole
trial. While each case runs, every process's CPU time is sampled once a second and summed by role (trial
workers, their data loaders, the trial's Ray control actors, the sweep driver, Ray's services, MLflow, the S3
store), over the case's wall time: the cores each role took. The cluster's services are also measured idle,
before anything runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
import yaml
from bench_allocator import TRIAL_WORKER_ALLOCATOR_ENV
from bench_data import cpu_pressure

from orchestrator.config import metric_names
from orchestrator.config.loader import load_sweep, parse_set
from orchestrator.config.schema import ExperimentConfig
from orchestrator.evaluation.classifier import load_split
from orchestrator.tracking.runs import TRIAL_TAG
from orchestrator.train.worker import load_perceptual
from sphere_core.train_step import make_train_state, train_step

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / ".cluster"
WARMUP = 5  # plain-loop steps left out of its timing
RAY = "ray"  # a trial's wall time outside its worker's train function: Ray starting and stopping the workers
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
TRIAL_CONTROL = (
    "ray::ImplicitFunc",
    "ray::TrainController",
    "ray::_QueueActor",
    "ray::PlacementGroupCleaner",
    "ray::SynchronizationActor",
    "ray::DatasetManager",
    "ray::PreemptionWatcher",
    "ray::_AutoscalingCoordinatorActor",
    "ray::SweepLock",
)
ROLES = (
    "trial workers",
    "their data loaders",
    "trial control",
    "sweep driver",
    "Ray services",
    "MLflow",
    "S3 store",
)


# -- the plain loop --------------------------------------------------------------------------------------
def plain_images_per_s(cfg: ExperimentConfig, steps: int, threads: int) -> float:
    """images/s of `steps` train steps of the config after WARMUP, on MNIST train batches in memory."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.run.seed)
    # The trial's own loader: the same network at the same precision (perceptual.precision).
    perceptual = load_perceptual(cfg.perceptual, cfg.model.channels, torch.device("cpu"))
    sphere = cfg.sphere
    state = make_train_state(sphere, device="cpu", perceptual=perceptual)
    split = load_split("mnist", "train")
    x, y = split.images.float() / 127.5 - 1.0, split.labels
    generator, batch = torch.Generator().manual_seed(0), cfg.data.batch_size
    for i in range(WARMUP + steps):
        if i == WARMUP:
            started = time.perf_counter()
        pick = torch.randint(len(y), (batch,), generator=generator)
        train_step(state, x[pick], y[pick], optim=cfg.optim, global_batch=batch, generator=generator)
    return steps * batch / (time.perf_counter() - started)


def _plain_worker(
    cfg: dict[str, object], steps: int, threads: int, out: multiprocessing.Queue[float]
) -> None:
    out.put(plain_images_per_s(ExperimentConfig.from_dict(cfg), steps, threads))


def plain_side_by_side(cfg: ExperimentConfig, steps: int, threads: int, count: int) -> list[float]:
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[float] = context.Queue()
    procs = [
        context.Process(target=_plain_worker, args=(cfg.to_dict(), steps, threads, out)) for _ in range(count)
    ]
    before = os.environ.copy()
    os.environ.update(TRIAL_WORKER_ALLOCATOR_ENV)  # spawned with the trial workers' malloc, as they are
    for proc in procs:
        proc.start()
    os.environ.clear()
    os.environ.update(before)
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    return results


# -- CPU by role -----------------------------------------------------------------------------------------
def _cluster_roots() -> dict[int, str]:
    roots = {}
    for name, role in (("ray", "Ray services"), ("mlflow", "MLflow"), ("s3", "S3 store")):
        path = CLUSTER / "pids" / f"{name}.pid"
        if path.exists():
            roots[int(path.read_text())] = role
    if not roots:
        raise SystemExit("error: no local cluster (.cluster/pids); run `make cluster-up` first")
    return roots


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def _role(pid: int, parents: Mapping[int, int], roots: Mapping[int, str]) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    name = argv[0].decode(errors="replace")
    seen, cursor = set(), pid
    while cursor not in roots and cursor not in seen and cursor > 1:
        seen.add(cursor)
        cursor = parents.get(cursor, 0)
    if cursor not in roots:
        return None
    if roots[cursor] != "Ray services":
        return roots[cursor]
    if any(arg.startswith((b"orchestrator.sweep", b"orchestrator.tracking")) for arg in argv):
        return "sweep driver"  # the job's entrypoint and its run-end watcher
    if name.startswith("ray::RayTrainWorker"):
        return "their data loaders" if comm == "pt_data_worker" else "trial workers"
    if name.startswith(TRIAL_CONTROL):
        return "trial control"
    return "Ray services"


class CpuSampler:
    """Samples every process's CPU time once a second; CPU-seconds per role between start() and stop(). Each
    second's CPU goes to the role the process has then: Ray starts its workers idle and renames them when
    they take an actor (ray::IDLE becomes ray::RayTrainWorker)."""

    def __init__(self) -> None:
        self.roots = _cluster_roots()
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds at the last sample
        self.seconds = dict.fromkeys(ROLES, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, count: bool = True) -> None:
        stats = {pid: s for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if (s := _stat(pid))}
        parents = {pid: parent for pid, (parent, _) in stats.items()}
        for pid, (_, cpu) in stats.items():
            role = _role(pid, parents, self.roots)
            if role is None:
                continue
            if count:  # a process born since the last sample counts from its birth
                self.seconds[role] += cpu - self.cpu.get(pid, 0.0)
            self.cpu[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def start(self) -> CpuSampler:
        self._sample(count=False)
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> tuple[dict[str, float], float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.seconds, time.perf_counter() - self.started


# -- one case: trials on the cluster ---------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    wall_s: float
    phases: dict[str, float]  # metric_names.LOOP_PHASES and RAY -> seconds
    images: int


def trials_sweep(sweep: Path, seeds: int, folder: Path) -> Path:
    """The sweep with its search replaced by `seeds` seeds, written into `folder` (its base made absolute)."""
    raw = yaml.safe_load(sweep.read_text())
    raw["base"] = str((sweep.parent / raw["base"]).resolve())
    raw["search"] = {"run.seed": {"grid": list(range(seeds))}}
    raw["tune"] = {**raw.get("tune", {}), "max_concurrent_trials": seeds}
    out = folder / f"{raw['name']}-{seeds}.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def run_sweep(sweep: Path, sets: list[str], experiment: str) -> tuple[list[Trial], dict[str, float], float]:
    """Runs the sweep with `sets`; its trials' breakdowns, and the CPU-seconds per role over the wall time."""
    command = [sys.executable, "infra/local/cluster.py", "submit", "--"]  # a Ray job, as users run sweeps
    command += ["python", "-m", "orchestrator.sweep", str(sweep), "--new-experiment"]
    for item in [*sets, f"tracking.experiment={experiment}", f"tracking.registered_model={experiment}"]:
        command += ["--set", item]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = CpuSampler().start()
    output, _ = proc.communicate()
    cpu, wall = sampler.stop()
    if proc.returncode:
        raise SystemExit(f"error: the sweep failed (exit {proc.returncode}):\n{output[-3000:]}")
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"error: the sweep logged no MLflow experiment {experiment}")
    trials = []
    for run in client.search_runs([found.experiment_id], f"tags.`{TRIAL_TAG}` != ''"):
        m = run.data.metrics
        phases = {phase: m[metric_names.phase_time(phase)] for phase in metric_names.LOOP_PHASES}
        run_wall = (run.info.end_time - run.info.start_time) / 1000
        phases[RAY] = max(run_wall - m[metric_names.LOOP_WALL], 0.0)
        trials.append(Trial(run_wall, phases, int(m[metric_names.TRAIN_IMAGES])))
    return trials, cpu, wall


def loop_images_per_s(trial: Trial) -> float:
    """The training loop's images/s: its wall less setup and evals (what the plain loop does not do)."""
    p = trial.phases
    return trial.images / (sum(p[k] for k in metric_names.LOOP_PHASES) - p["setup"] - p["eval"])


def report(title: str, trials: list[Trial], plain: list[float], cpu: dict[str, float], wall: float) -> None:
    plain_rate = sum(plain) / len(plain)
    print(f"\n== {title}: plain loop {', '.join(f'{p:.1f}' for p in plain)} img/s (mean {plain_rate:.1f})")
    columns = [RAY, *metric_names.LOOP_PHASES]
    print(
        f"{'trial':<7}{'wall s':>8}"
        + "".join(f"{c:>14}" for c in columns)
        + f"{'loop/plain':>12}{'trial/plain':>12}"
    )
    for i, t in enumerate(trials):
        cells = "".join(f"{t.phases[c]:>14.1f}" for c in columns)
        ratio = loop_images_per_s(t) / plain_rate
        whole = t.images / t.wall_s / plain_rate
        print(f"{i:<7}{t.wall_s:>8.1f}{cells}{ratio:>12.2f}{whole:>12.2f}")
    print(
        f"CPU by role over {wall:.0f} s (cores): " + ", ".join(f"{r} {s / wall:.2f}" for r, s in cpu.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="sweeps/demo.yaml")
    parser.add_argument("--steps", type=int, default=400, help="train steps per trial")
    parser.add_argument("--plain-steps", type=int, default=100, help="timed plain-loop steps")
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds the idle cluster is watched")
    parser.add_argument("--set", action="append", default=[], metavar="K=V", help="more sweep overrides")
    args = parser.parse_args()
    if "MLFLOW_TRACKING_URI" not in os.environ:
        raise SystemExit("error: MLFLOW_TRACKING_URI is unset; run `source .cluster/env` first")
    sets = [
        f"run.steps={args.steps}",
        f"optim.total_steps={args.steps}",
        f"run.eval_every={args.steps}",
        f"run.checkpoint_every={args.steps}",
        "loss.adversarial_start_step=0",  # the plain loop's step too: the critic's cost from the first step
        *args.set,
    ]
    sweep = (ROOT / args.sweep).resolve()
    cfg = load_sweep(sweep, dict(parse_set(item) for item in sets)).experiment
    threads = max(1, int(cfg.scaling.cpus_per_worker))
    print(
        f"{args.sweep}: {cfg.model.encoder_size} model, batch {cfg.data.batch_size}, {args.steps} steps a "
        f"trial, {threads} torch thread(s) per worker; cpu pressure {cpu_pressure()}"
    )
    idle = CpuSampler().start()
    time.sleep(args.idle_s)
    idle_cpu, idle_wall = idle.stop()
    print(
        f"idle cluster over {idle_wall:.0f} s (cores): "
        + ", ".join(f"{r} {s / idle_wall:.2f}" for r, s in idle_cpu.items() if s)
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as folder:
        for title, count in (("one trial alone", 1), ("two trials side by side", 2)):
            plain = plain_side_by_side(cfg, args.plain_steps, threads, count)
            trials, cpu, wall = run_sweep(
                trials_sweep(sweep, count, Path(folder)), sets, f"bench-breakdown-{stamp}-{count}"
            )
            report(title, trials, plain, cpu, wall)
    print(f"cpu pressure after: {cpu_pressure()}")


if __name__ == "__main__":
    main()
