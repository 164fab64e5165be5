"""Command line of the server (`gptbigcode-lsp`, `python -m lsp_server`): transport, model
choice and logging. Logs go to stderr or --log-file, never to stdout, which is the protocol."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence

DEFAULT_PORT = 2087


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptbigcode-lsp",
        description="Language server with inline completions from a GPTBigCode model.",
    )
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (default)")
    transport.add_argument("--tcp", action="store_true", help="listen for one TCP client")
    transport.add_argument("--ws", action="store_true", help="listen for one WebSocket client")
    parser.add_argument("--host", default="127.0.0.1", help="address for --tcp / --ws")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port for --tcp / --ws")
    parser.add_argument(
        "--model", help='checkpoint folder, model id in the local Hugging Face cache, or "default"'
    )
    parser.add_argument("--device", help='"auto", "cpu", "cuda", "cuda:N" or "mps"')
    parser.add_argument("--dtype", help='"auto", "float32", "float16" or "bfloat16"')
    parser.add_argument("--threads", type=int, help="CPU threads for the model (torch)")
    parser.add_argument("--log-file", help="write logs here instead of stderr")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug logs"
    )
    return parser


def configure_logging(verbose: int, log_file: str | None) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler: logging.Handler = (
        logging.FileHandler(log_file, encoding="utf-8") if log_file else
        logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if verbose < 2:
        logging.getLogger("pygls").setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ws and importlib.util.find_spec("websockets") is None:
        print("gptbigcode-lsp: --ws needs the websockets package (pip install 'pygls[ws]')",
              file=sys.stderr)
        return 2
    configure_logging(args.verbose, args.log_file)
    import torch

    from .options import merge
    from .server import server

    if args.threads is not None:
        torch.set_num_threads(max(args.threads, 1))
    given = {k: v for k, v in {"model": args.model, "device": args.device,
                               "dtype": args.dtype}.items() if v is not None}
    server.options, problems = merge(server.options, given)
    if problems:
        print("gptbigcode-lsp: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.tcp:
        server.start_tcp(args.host, args.port)
    elif args.ws:
        server.start_ws(args.host, args.port)
    else:
        protocol_out = sys.stdout.buffer
        sys.stdout = sys.stderr  # a stray print must not corrupt the protocol stream
        server.start_io(sys.stdin.buffer, protocol_out)
    return 0
