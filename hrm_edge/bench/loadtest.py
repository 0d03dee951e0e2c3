"""Bounded load test of `hrm-edge serve` on loopback (`make loadtest`): it starts the server on
ephemeral ports, runs N concurrent clients x M puzzles of mixed difficulty (the HRM 6x6 demo's
validation puzzles, one puzzle per request, policy q) with malformed requests interleaved, then a
batch-1 latency comparison against a local solve of the same bundle and graph, and always stops
the server. Bounded in requests (N x M) and in seconds (--max-seconds; the server also stops by
itself after that plus a margin).

It reports throughput, p50/p99 latency, lost answers (a valid request without an answer), duplicated
answers (rows beyond those asked for), answers that differ from the local solve, server restarts
(the server process and its health checked throughout), and whether each malformed request got
exactly one error while serving went on.

    python -m hrm_edge.bench.loadtest --out bench/results   # loadtest.json + loadtest.png
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrm_edge.act import halt_rule, parse_policy
from hrm_edge.bench.continuous import demo_bundle
from hrm_edge.bundle import open_bundle
from hrm_edge.puzzles.datasets import load_puzzle_set
from hrm_edge.runtimes.solver import GraphSolver, default_graph
from hrm_edge.serving.client import RemoteSolver, ServerError
from hrm_edge.serving.protocol import DEFAULT_SCHEDULER, SOLVER_MODEL, request_inputs
from hrm_edge.serving.tritonserver import free_port

ROOT = Path(__file__).resolve().parents[2]
BATCH1_TARGET_MS = 2.0  # issue 18: p50 through `serve` within 2 ms of a local solve at batch 1
START_TIMEOUT_S = 120.0  # the server must be ready within this


@dataclass(frozen=True)
class LoadConfig:
    """clients x puzzles (per client) requests of one puzzle each, at most `max_seconds` for the load
    phase; every `malformed_every`-th request of a client is malformed (0: none); `batch1` sequential
    single-puzzle requests (each beside a local solve of the same puzzle) after the load phase."""

    clients: int = 8
    puzzles: int = 32
    max_seconds: float = 120.0
    malformed_every: int = 8
    batch1: int = 200
    slots: int = 16
    instances: int = 8
    threads: int = 1
    scheduler: str = DEFAULT_SCHEDULER


def malformed_requests(seq_len: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(what is wrong, the tensors replaced in an otherwise valid request): each must get one error."""
    return [("tokens of another sequence length", {"tokens": np.zeros((1, seq_len - 1), np.int64)}),
            ("tokens beyond the vocabulary", {"tokens": np.full((1, seq_len), 10_000, np.int64)}),
            ("an unknown halt_mode", {"halt_mode": np.array([7], np.int64)}),
            ("max_steps 0", {"max_steps": np.array([0], np.int64)}),
            ("2 puzzle ids for 1 puzzle", {"puzzle_ids": np.zeros(2, np.int64)}),
            ("float32 tokens", {"tokens": np.zeros((1, seq_len), np.float32)})]


class Server:
    """`hrm-edge serve BUNDLE` in a subprocess on loopback ports; `stop()` always ends it."""

    def __init__(self, bundle: str, graph: str, cfg: LoadConfig, log: Path) -> None:
        self.http, self.grpc = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        self._log = log.open("w")
        cmd = [sys.executable, "-m", "hrm_edge.cli", "serve", bundle, "--graph", graph,
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--slots", str(cfg.slots),
               "--instances", str(cfg.instances), "--threads", str(cfg.threads), "--exit-timeout", "20",
               "--scheduler", cfg.scheduler,
               "--max-seconds", str(cfg.max_seconds + 4 * START_TIMEOUT_S)]  # stops by itself if we die
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self) -> RemoteSolver:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} before it was ready "
                                   f"(log: {self._log.name})")
            try:
                return RemoteSolver(self.url, timeout=30.0)
            except ServerError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server was not ready in {START_TIMEOUT_S:.0f} s") from None
                time.sleep(0.25)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then SIGKILL after 60 s; returns how it ended."""
        alive = self.proc.poll() is None
        if alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        text = Path(self._log.name).read_text(errors="replace")
        stopped = [line for line in text.splitlines() if line.startswith("stopped (")]
        return {"alive_until_stopped": alive, "exit_code": self.proc.returncode,
                "stop_line": stopped[-1] if stopped else None}


class HealthWatch(threading.Thread):
    """Polls the server's liveness and its model's readiness every `period` seconds, and whether the
    process started is still running (a server that died or restarted fails one or the other)."""

    def __init__(self, server: Server, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.server, self.period = server, period
        self.checks = self.failures = 0
        self.exited = False
        self.done = threading.Event()

    def run(self) -> None:
        import tritonclient.http as http

        client = http.InferenceServerClient(f"127.0.0.1:{self.server.http}", connection_timeout=5.0,
                                            network_timeout=5.0)
        while not self.done.wait(self.period):
            self.checks += 1
            try:
                live = client.is_server_live() and client.is_model_ready(SOLVER_MODEL)
            except Exception:
                live = False
            self.failures += not live
            self.exited |= self.server.proc.poll() is not None
        client.close()


def run_clients(url: str, tokens: np.ndarray, ids: np.ndarray, want: dict[str, np.ndarray], cfg: LoadConfig,
                max_steps: int) -> dict[str, Any]:
    """The load phase: `cfg.clients` threads, each with its own client, sending its puzzles one per
    request (client c takes puzzles c*M .. c*M+M-1 of the set, wrapping around)."""
    mode, threshold = halt_rule(parse_policy("q"))
    bad = malformed_requests(tokens.shape[1])
    deadline = time.monotonic() + cfg.max_seconds
    lock = threading.Lock()
    tally: dict[str, Any] = {"sent": 0, "answered": 0, "lost": 0, "duplicated": 0, "mismatched": 0, "unsent": 0,
                             "malformed_sent": 0, "malformed_one_error": 0, "malformed_accepted": 0,
                             "latency_s": [], "steps": [], "lost_errors": []}

    def client(c: int) -> None:
        remote = RemoteSolver(url, timeout=60.0)
        k = 0  # malformed requests sent by this client
        for j in range(cfg.puzzles):
            if time.monotonic() > deadline:
                with lock:
                    tally["unsent"] += cfg.puzzles - j
                break
            if cfg.malformed_every and j % cfg.malformed_every == cfg.malformed_every - 1:
                _, change = bad[(c + k) % len(bad)]
                k += 1
                i = (c * cfg.puzzles + j) % len(tokens)
                try:
                    remote.infer({**request_inputs(tokens[i:i + 1], ids[i:i + 1], mode, threshold, max_steps),
                                  **change})
                    outcome = "malformed_accepted"
                except ServerError as exc:
                    outcome = "malformed_one_error" if len(str(exc).splitlines()) == 1 else "malformed_multi_line"
                with lock:
                    tally["malformed_sent"] += 1
                    tally[outcome] = tally.get(outcome, 0) + 1
            i = (c * cfg.puzzles + j) % len(tokens)
            t = time.perf_counter()
            try:
                out = remote.infer(request_inputs(tokens[i:i + 1], ids[i:i + 1], mode, threshold, max_steps))
            except ServerError as exc:
                with lock:
                    tally["sent"] += 1
                    tally["lost"] += 1
                    tally["lost_errors"].append(str(exc))
                continue
            dt = time.perf_counter() - t
            rows = len(out["steps"])
            same = rows >= 1 and bool((out["preds"][0] == want["preds"][i]).all() and
                                      out["steps"][0] == want["steps"][i])
            with lock:
                tally["sent"] += 1
                tally["answered"] += 1
                tally["duplicated"] += max(0, rows - 1)
                tally["mismatched"] += not same
                tally["latency_s"].append(dt)
                tally["steps"].append(int(out["steps"][0]))
        remote.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,), name=f"loadtest-client-{c}") for c in range(cfg.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    tally["wall_s"] = time.perf_counter() - t0
    return tally


def batch1_latency(remote: RemoteSolver, local: GraphSolver, tokens: np.ndarray, ids: np.ndarray, count: int,
                   max_steps: int) -> dict[str, Any]:
    """Sequential single-puzzle requests through the (otherwise idle) server, each beside a local
    solve of the same puzzle on the same bundle and graph (alternating which goes first), and a
    request the server rejects at once (an unknown halt_mode): its round trip is the transport's
    floor (client, Triton and the solver model's Python-backend stub; no segment runs)."""
    policy = parse_policy("q")
    mode, threshold = halt_rule(policy)
    served, here, rejected = [], [], []
    for n in range(count):
        i = n % len(tokens)

        def through_serve(i: int = i) -> None:
            t = time.perf_counter()
            remote.infer(request_inputs(tokens[i:i + 1], ids[i:i + 1], mode, threshold, max_steps))
            served.append(time.perf_counter() - t)

        def locally(i: int = i) -> None:
            t = time.perf_counter()
            local.solve(tokens[i:i + 1], ids[i:i + 1], policy, max_steps, 1)
            here.append(time.perf_counter() - t)

        for f in ((through_serve, locally) if n % 2 == 0 else (locally, through_serve)):
            f()
        t = time.perf_counter()
        try:
            remote.infer({**request_inputs(tokens[i:i + 1], ids[i:i + 1], mode, threshold, max_steps),
                          "halt_mode": np.array([-1], np.int64)})
        except ServerError:
            rejected.append(time.perf_counter() - t)
    serve_p50, local_p50 = 1e3 * float(np.median(served)), 1e3 * float(np.median(here))
    paired = 1e3 * float(np.median(np.subtract(served, here)))
    return {"requests": count, "serve_p50_ms": serve_p50, "local_p50_ms": local_p50,
            "serve_p99_ms": 1e3 * float(np.percentile(served, 99)),
            "local_p99_ms": 1e3 * float(np.percentile(here, 99)),
            "overhead_p50_ms": serve_p50 - local_p50, "target_ms": BATCH1_TARGET_MS,
            # the same puzzle through both, moments apart: robust to a shared machine's load swings
            "paired_overhead_p50_ms": paired,
            "rejected_request_p50_ms": 1e3 * float(np.median(rejected)) if rejected else None,
            "met": max(paired, serve_p50 - local_p50) <= BATCH1_TARGET_MS, "serve_ms": [1e3 * s for s in served],
            "local_ms": [1e3 * s for s in here]}


def server_statistics(http_port: int) -> dict[str, dict[str, float]]:
    """Triton's own per-model statistics (mean ms per successful request of queueing, compute_input,
    compute_infer, compute_output, and the whole request in the server): what a request spent inside
    the server, against what its client saw."""
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{http_port}")
    try:
        stats = client.get_inference_statistics()["model_stats"]
    finally:
        client.close()
    out = {}
    for model in stats:
        inference = model["inference_stats"]
        n = max(1, int(inference["success"]["count"]))
        out[model["name"]] = {"requests": int(inference["success"]["count"]),
                              **{k: v["ns"] / n / 1e6 for k, v in inference.items()
                                 if k in ("success", "queue", "compute_input", "compute_infer", "compute_output")}}
    return out


def batch1_paths(bundle_dir: str, out: Path, cfg: LoadConfig, count: int,
                 data: str = str(ROOT / "calib_data" / "sudoku6")) -> dict[str, Any]:
    """Batch-1 p50 latency of every serving path side by side, interleaved (each puzzle goes through
    every path in turn, the order rotating), on one bundle with `cfg.threads` ONNX Runtime threads:

    - local solve of the default graph, and of segment.fp32 (the graph a BLS segment model serves);
    - `serve`: the `hrm-edge serve` process (tritonserver + the in-solver repository: the solver
      model runs the default graph itself, no BLS hop);
    - `triton_bls`: tritonserver + repository, solver model -> BLS -> Python-backend segment model
      (segment.fp32, ORT in the segment model's stub);

    Each server's rejected-request round trip (an unknown halt_mode) is its transport floor."""
    from hrm_edge.serving.triton_repo import write_repository
    from hrm_edge.serving.tritonserver import TritonServer

    out.mkdir(parents=True, exist_ok=True)
    bundle = open_bundle(bundle_dir)
    graph = default_graph(bundle, "ort")
    steps = bundle.manifest.need_halting().max_steps
    pset = load_puzzle_set(data, "val")
    tokens, ids = pset.inputs, pset.puzzle_ids
    policy = parse_policy("q")
    mode, threshold = halt_rule(policy)
    locals_ = {f"local {graph}": GraphSolver(bundle, graph, threads=cfg.threads),
               "local segment.fp32": GraphSolver(bundle, "segment.fp32", threads=cfg.threads)}
    repos = {"triton_bls": ("python", "segment.fp32")}
    servers: dict[str, Any] = {}
    remotes: dict[str, RemoteSolver] = {}
    load_avg = {"at_start": os.getloadavg()[0]}
    serve = Server(str(bundle.path), graph, cfg, out / "paths-serve.log")
    try:
        for name, (backend, g) in repos.items():
            repo = write_repository(bundle.path, out / f"repo-{name}", graph=g, slots=cfg.slots, force=True,
                                    segment_backend=backend, threads=cfg.threads)
            servers[name] = TritonServer(repo, exit_timeout_s=2, log_path=out / f"paths-{name}.log").start()
            remotes[name] = RemoteSolver(servers[name].http_url, timeout=30.0)
        remotes["serve"] = serve.wait_ready()
        paths = [*locals_, *remotes]
        ms: dict[str, list[float]] = {p: [] for p in paths}
        floor: dict[str, list[float]] = {p: [] for p in remotes}
        for n in range(count):
            i = n % len(tokens)
            one = request_inputs(tokens[i:i + 1], ids[i:i + 1], mode, threshold, steps)
            for p in paths[n % len(paths):] + paths[:n % len(paths)]:
                t = time.perf_counter()
                if p in locals_:
                    locals_[p].solve(tokens[i:i + 1], ids[i:i + 1], policy, steps, 1)
                else:
                    remotes[p].infer(one)
                ms[p].append(1e3 * (time.perf_counter() - t))
            for p, remote in remotes.items():
                t = time.perf_counter()
                try:
                    remote.infer({**one, "halt_mode": np.array([-1], np.int64)})
                except ServerError:
                    floor[p].append(1e3 * (time.perf_counter() - t))
        load_avg["at_end"] = os.getloadavg()[0]
        server_side = {name: server_statistics(server.http_port) for name, server in servers.items()}
    finally:
        for remote in remotes.values():
            remote.close()
        for server in servers.values():
            server.stop()
        serve.stop()
    local_p50 = float(np.median(ms[f"local {graph}"]))
    fp32_p50 = float(np.median(ms["local segment.fp32"]))
    report = {"bundle": str(bundle.path), "default_graph": graph, "threads": cfg.threads, "slots": cfg.slots,
              "requests": count, "policy": "q", "max_steps": steps, "cpu_count": os.cpu_count(),
              "load_average_1min": load_avg, "target_ms": BATCH1_TARGET_MS,
              "paths": {p: {"p50_ms": float(np.median(v)), "p99_ms": float(np.percentile(v, 99)),
                            "rejected_request_p50_ms": float(np.median(floor[p])) if floor.get(p) else None}
                        for p, v in ms.items()}}
    for p, entry in report["paths"].items():
        if p in locals_:
            continue
        base = "local segment.fp32" if p == "triton_bls" else f"local {graph}"  # the same graph, solved here
        entry["compared_with"] = base
        entry["overhead_p50_ms"] = entry["p50_ms"] - (fp32_p50 if p == "triton_bls" else local_p50)
        # the same puzzle through both, moments apart: the median of the differences is robust to a
        # shared machine's load swings that move both
        entry["paired_overhead_p50_ms"] = float(np.median(np.subtract(ms[p], ms[base])))
        entry["within_target"] = entry["paired_overhead_p50_ms"] <= BATCH1_TARGET_MS
    report["tritonserver_statistics_mean_ms"] = server_side
    report["ms"] = ms
    (out / "batch1-paths.json").write_text(json.dumps(report, indent=2))
    return report


def run(bundle_dir: str, out: Path, cfg: LoadConfig, data: str = str(ROOT / "calib_data" / "sudoku6")) -> dict:
    """Run the load test; writes OUT/loadtest.json, OUT/loadtest.png and OUT/loadtest-server.log."""
    out.mkdir(parents=True, exist_ok=True)
    bundle = open_bundle(bundle_dir)
    graph = default_graph(bundle, "ort")
    steps = bundle.manifest.need_halting().max_steps
    pset = load_puzzle_set(data, "val")
    used = min(len(pset), cfg.clients * cfg.puzzles)
    tokens, ids = pset.inputs, pset.puzzle_ids
    local = GraphSolver(bundle, graph, threads=cfg.threads)
    expected = local.solve(tokens[:used], ids[:used], parse_policy("q"), steps, 64)
    want = {"preds": expected.predictions, "steps": expected.steps}
    load_avg = {"at_start": os.getloadavg()[0]}  # a shared machine: how busy it was
    server = Server(str(bundle.path), graph, cfg, out / "loadtest-server.log")
    try:
        remote = server.wait_ready()
        watch = HealthWatch(server)
        watch.start()
        load = run_clients(server.url, tokens[:used], ids[:used], want, cfg, steps)
        batch1 = batch1_latency(remote, local, tokens, ids, cfg.batch1, steps)
        watch.done.set()
        watch.join()
        remote.close()
        load_avg["at_end"] = os.getloadavg()[0]
    finally:
        ended = server.stop()
    lat = np.array(load.pop("latency_s")) * 1e3
    load["lost_errors"] = load["lost_errors"][:10]
    served_steps = load.pop("steps")
    report = {
        "bundle": str(bundle.path), "graph": graph, "runtime": "ort cpu (in the serve process)",
        "policy": "q", "max_steps": steps, "config": asdict(cfg), "puzzles_in_set": used,
        "cpu_count": os.cpu_count(), "load_average_1min": load_avg,
        "expected_steps_histogram": np.bincount(expected.steps).tolist(),
        "load": {**load, "puzzles_per_s": load["answered"] / load["wall_s"],
                 "latency_ms": {"p50": _pct(lat, 50), "p99": _pct(lat, 99), "mean": float(lat.mean()) if len(lat)
                                else None, "max": float(lat.max()) if len(lat) else None},
                 "steps_histogram": np.bincount(served_steps).tolist() if served_steps else []},
        "server": {"pid": server.pid, "restarts": int(watch.exited or not ended["alive_until_stopped"]),
                   "health_checks": watch.checks, "health_failures": watch.failures, **ended},
        "batch1": batch1,
    }
    report["targets"] = {
        "nothing_lost_or_duplicated": load["lost"] == 0 and load["duplicated"] == 0,
        "answers_identical_to_local_solve": load["mismatched"] == 0 and load["answered"] > 0,
        "zero_server_restarts": report["server"]["restarts"] == 0 and watch.failures == 0,
        "each_malformed_request_one_error": load["malformed_one_error"] == load["malformed_sent"],
        "batch1_p50_within_2ms_of_local": batch1["met"],
    }
    (out / "loadtest.json").write_text(json.dumps(report, indent=2))
    plot(report, lat, out / "loadtest.png")
    return report


def _pct(a: np.ndarray, q: float) -> float | None:
    return float(np.percentile(a, q)) if len(a) else None


def plot(report: dict, load_ms: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, b1 = report["config"], report["batch1"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.hist(load_ms, bins=40)
    ax1.set_xlabel("request latency (ms)")
    ax1.set_ylabel("requests")
    ax1.set_title(f"load: {cfg['clients']} clients x {cfg['puzzles']} puzzles, {cfg['slots']} slots")
    bins = np.linspace(0, max(max(b1["serve_ms"], default=1), max(b1["local_ms"], default=1)), 40)
    ax2.hist(b1["local_ms"], bins=bins, alpha=0.6, label=f"local solve (p50 {b1['local_p50_ms']:.2f} ms)")
    ax2.hist(b1["serve_ms"], bins=bins, alpha=0.6, label=f"through serve (p50 {b1['serve_p50_ms']:.2f} ms)")
    ax2.set_xlabel("batch-1 latency (ms)")
    ax2.set_title("batch 1, idle server")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    defaults = LoadConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="Exported HRM 6x6 demo bundle (default: exported to OUT/sudoku6-demo-bundle).")
    p.add_argument("--out", default="bench/results")
    for name, value in asdict(defaults).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--paths", type=int, default=0, metavar="N",
                   help="Instead of the load test: N batch-1 requests through every serving path, interleaved "
                        "(batch1-paths.json).")
    args = p.parse_args()
    out = Path(args.out)
    cfg = LoadConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    if args.paths:
        paths = batch1_paths(args.bundle or demo_bundle(out), out, cfg, args.paths)["paths"]
        for name, e in paths.items():
            extra = (f", overhead {e['overhead_p50_ms']:+.2f} ms (paired {e['paired_overhead_p50_ms']:+.2f} ms) vs "
                     f"{e['compared_with']}, rejected request {e['rejected_request_p50_ms']:.2f} ms"
                     if "compared_with" in e else "")
            print(f"{name}: p50 {e['p50_ms']:.2f} ms{extra}")
        return
    report = run(args.bundle or demo_bundle(out), out, cfg)
    load, b1 = report["load"], report["batch1"]
    print(f"load: {load['answered']} answers in {load['wall_s']:.1f} s = {load['puzzles_per_s']:.0f} puzzles/s, "
          f"p50 {load['latency_ms']['p50']:.1f} ms, p99 {load['latency_ms']['p99']:.1f} ms; lost {load['lost']}, "
          f"duplicated {load['duplicated']}, differing from local solve {load['mismatched']}; malformed "
          f"{load['malformed_one_error']}/{load['malformed_sent']} got one error; server restarts "
          f"{report['server']['restarts']}")
    print(f"batch 1: serve p50 {b1['serve_p50_ms']:.2f} ms vs local {b1['local_p50_ms']:.2f} ms "
          f"(overhead {b1['overhead_p50_ms']:+.2f} ms, paired {b1['paired_overhead_p50_ms']:+.2f} ms, target "
          f"{BATCH1_TARGET_MS} ms); a rejected request's round "
          f"trip p50 {b1['rejected_request_p50_ms']:.2f} ms")
    print(f"targets: {report['targets']}")
    if not all(report["targets"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
