"""`appliance engine`: the internal worker process that serves one model (run by `serve`)."""

from __future__ import annotations

import argparse

from appliance.engines.supervisor import files_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "engine",
        help="(internal) run one model as a worker process",
        description="Internal: serve one model over a loopback OpenAI-compatible API. "
        "`appliance serve` starts and supervises these workers.",
    )
    p.add_argument("--name", required=True, help="model id served")
    p.add_argument("--task", choices=["chat", "embedding"], required=True)
    p.add_argument("--file", action="append", default=[], metavar="REL=PATH",
                   help="a model file: its name inside the model and its path on disk")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--threads", type=int, default=0, help="0 = half the cores")
    p.add_argument("--context-tokens", type=int, default=2048)
    p.add_argument("--max-queue", type=int, default=32)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.engines.worker import serve_engine

    return serve_engine(
        name=args.name, task=args.task, files=files_from_args(args.file), host=args.host,
        port=args.port, threads=args.threads, context_tokens=args.context_tokens,
        max_queue=args.max_queue,
    )
