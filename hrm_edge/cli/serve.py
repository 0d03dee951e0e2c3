"""`hrm-edge serve` (the solver on this machine: the bundle's Triton repository on the Triton server
that the nvidia-pytriton wheel ships) and `hrm-edge triton-repo` (a Triton Inference Server model
repository from a bundle)."""

from __future__ import annotations

import click

from hrm_edge.bundle import Bundle
from hrm_edge.serving.client import RemoteSolver
from hrm_edge.serving.protocol import DEFAULT_SCHEDULER, SCHEDULERS, SEGMENT_BACKENDS
from hrm_edge.serving.triton_repo import REQUEST_THREADS

DEFAULT_SLOTS = 16


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default; 0.0.0.0 serves the network).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--slots", type=click.IntRange(1, 4096), default=DEFAULT_SLOTS, show_default=True,
              help="Puzzles in flight in the continuous ACT loop (the segment batch).")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=DEFAULT_SCHEDULER, show_default=True,
              help="iterative: Triton's iterative sequence batcher puts the puzzles of every request in flight "
                   "into each segment's batch; in-solver: each request's puzzles run their own continuous loop "
                   "inside the solver model, one request at a time.")
@click.option("--instances", type=click.IntRange(1, 256), default=REQUEST_THREADS, show_default=True,
              help="Requests in flight at once (scheduler iterative: their puzzles share the loop's slots).")
@click.option("--graph", help="Segment graph to serve (default: the runtime's default).")
@click.option("--runtime", type=click.Choice(["ort", "trt"]), default="ort", show_default=True)
@click.option("--engine", type=click.Path(exists=True), help="TensorRT engine (runtime trt).")
@click.option("--threads", type=click.IntRange(1), help="ONNX Runtime intra-op threads.")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True),
              help="Stop by itself after this many seconds (tests, load tests).")
@click.option("--exit-timeout", type=click.IntRange(0), default=10, show_default=True,
              help="Seconds requests in flight get to finish at shutdown.")
def serve(bundle: str, host: str, http_port: int, grpc_port: int, slots: int, scheduler: str, instances: int,
          graph: str | None, runtime: str, engine: str | None, threads: int | None, max_seconds: float | None,
          exit_timeout: int) -> None:
    """Serve BUNDLE's solver model (HTTP and gRPC, KServe v2) until SIGINT/SIGTERM or --max-seconds.

    The server is the Triton Inference Server of the nvidia-pytriton wheel, run on the bundle's
    repository (`triton-repo --segment-backend SCHEDULER`) written into a private temporary directory;
    the segment runs in the server's Python backend on the bundle where it is. in-solver (default): the
    solver model runs each request's continuous ACT loop; iterative: Triton's iterative sequence batcher
    batches the puzzles of all requests in flight (README: Serving, measured side by side)."""
    from hrm_edge.serving.protocol import SOLVER_MODEL
    from hrm_edge.serving.tritonserver import serve_bundle, serve_until_stopped, served_graph

    server = serve_bundle(bundle, host, http_port, grpc_port, slots=slots, graph=graph, runtime=runtime,
                          engine=engine, threads=threads, request_threads=instances, exit_timeout_s=exit_timeout,
                          scheduler=scheduler)
    info = served_graph(server)

    def ready() -> None:
        click.echo(f"serving {SOLVER_MODEL} ({info['task']}, {runtime} {info['graph']}, {slots} slots) on "
                   f"http://{host}:{server.http_port} and grpc://{host}:{server.grpc_port}", err=True)
        click.echo("ready", err=True)

    reason = serve_until_stopped(server, max_seconds, ready)
    click.echo(f"stopped ({reason})", err=True)


@click.command("triton-repo")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Model repository directory to create.")
@click.option("--graph", help="Segment graph for the segment model (default: the portable fp32 one).")
@click.option("--plan", type=click.Path(exists=True, dir_okay=False),
              help="A TensorRT engine built on the target (`hrm-edge build`): the segment model uses the "
                   "tensorrt backend instead of onnxruntime.")
@click.option("--slots", type=click.IntRange(1, 4096), default=DEFAULT_SLOTS, show_default=True)
@click.option("--segment-backend", type=click.Choice(SEGMENT_BACKENDS), default="onnxruntime", show_default=True,
              help="Where the segment runs: Triton's onnxruntime backend; its Python backend with ONNX Runtime in "
                   "the stub (a server without the onnxruntime backend, e.g. the nvidia-pytriton wheel's); or "
                   "in-solver: inside the solver model, on a copy of the bundle (no BLS hop); iterative: inside "
                   "hrm_iterative, one puzzle per request, batched segment by segment by Triton's iterative "
                   "sequence batcher.")
@click.option("--threads", type=click.IntRange(1),
              help="ONNX Runtime intra-op threads (python, in-solver and iterative).")
@click.option("--force", is_flag=True, help="Replace an existing directory.")
def triton_repo(bundle: str, output: str, graph: str | None, plan: str | None, slots: int, segment_backend: str,
                threads: int | None, force: bool) -> None:
    """Write a Triton Inference Server model repository for BUNDLE: a segment model and the solver model."""
    from hrm_edge.serving.triton_repo import write_repository

    out = write_repository(bundle, output, graph=graph, plan=plan, slots=slots, force=force,
                           segment_backend=segment_backend, threads=threads, runtime="trt" if plan else "ort")
    click.echo(f"wrote {out}: run it with tritonserver --model-repository {out}")


def connect_candidate(url: str, bundle: Bundle) -> RemoteSolver:
    """`parity --server`'s candidate: a client of the solver model at `url`, checked to serve
    `bundle` (its digest where the server says, else its sequence length: a note line), before any
    reference work. Its `solve` returns predictions, steps and the halting segment's q values, no
    per-step logits: parity gates it closed-loop only."""
    remote = RemoteSolver(url)
    note = remote.check_bundle(bundle.manifest.digest, int(bundle.config["seq_len"]), str(bundle.path))
    if note:
        click.echo(f"note: {note}", err=True)
    return remote
