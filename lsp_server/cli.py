"""Command line of the server (`gptbigcode-lsp`, `python -m lsp_server`): transport, model
choice and logging. Logs go to stderr or --log-file, never to stdout, which is the protocol."""

from __future__ import annotations

import argparse
import enum
import importlib.metadata
import importlib.util
import io
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, NoReturn, cast

from .cpu_share import default_threads, prepare_openmp

log = logging.getLogger(__name__)
DEFAULT_PORT = 2087
_KEPT_CHARS = 80  # log arguments of pygls kept as they are: method names, request ids


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptbigcode-lsp",
        usage="%(prog)s [options]\n       %(prog)s scan [scan options] PATH...",
        description="Language server with inline completions from a GPTBigCode model. "
                    "`gptbigcode-lsp scan PATH...` reports secrets in files instead "
                    "(see `gptbigcode-lsp scan --help`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
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
    parser.add_argument("--quantize", help='"none" or "int8" (int8 weights)')
    parser.add_argument(
        "--threads", type=int,
        help="CPU threads for the model (torch); default: half the physical cores, 1 to 4",
    )
    parser.add_argument("--log-file", help="write logs here instead of stderr")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug logs"
    )
    return parser


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, for an editable install)."""
    try:
        return importlib.metadata.version("gptbigcode-lsp")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def configure_logging(verbose: int, log_file: str | None) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    handler: logging.Handler = (
        logging.FileHandler(log_file, encoding="utf-8") if log_file else
        logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ProtocolRedaction())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if verbose < 2:
        logging.getLogger("pygls").setLevel(max(level, logging.WARNING))


class ProtocolRedaction(logging.Filter):
    """Keeps message contents out of pygls' log records: its debug and info lines carry
    whole JSON bodies and params, which hold document text and completions (secrets among
    them). Numbers and short one-line strings (method names, ids) stay; any other argument
    becomes its kind and size. Our own modules never log text, at any verbosity."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pygls") and record.args:
            args = record.args
            values = (args,) if isinstance(args, Mapping) else args
            record.args = tuple(_redacted(value) for value in values)
        return True


def _redacted(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | enum.Enum):
        return value
    if isinstance(value, str):
        short = len(value) <= _KEPT_CHARS and value.isprintable()
        return value if short and not value.startswith(("{", "[")) else f"<{len(value)} chars>"
    if isinstance(value, BaseException):
        return f"<{type(value).__name__}>"
    size = f", {len(value)} items" if isinstance(value, Mapping | list | tuple) else ""
    return f"<{type(value).__name__}{size}>"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["scan"]:
        from .scan import main as scan

        configure_logging(0, None)
        return scan(argv[1:])
    args = build_parser().parse_args(argv)
    if args.ws and importlib.util.find_spec("websockets") is None:
        print("gptbigcode-lsp: --ws needs the websockets package (pip install 'pygls[ws]')",
              file=sys.stderr)
        return 2
    configure_logging(args.verbose, args.log_file)
    prepare_openmp()  # before torch is imported, below
    from .engine import set_threads
    from .options import merge
    from .server import server
    from .wire import FramedInput, ProtocolOutput

    threads = max(args.threads, 1) if args.threads is not None else default_threads()
    set_threads(threads)
    log.info("%d CPU threads for the model (OMP_WAIT_POLICY=%s)", threads,
             os.environ.get("OMP_WAIT_POLICY"))
    given = {k: v for k, v in {"model": args.model, "device": args.device, "dtype": args.dtype,
                               "quantize": args.quantize}.items() if v is not None}
    server.options, problems = merge(server.options, given)
    if problems:
        print("gptbigcode-lsp: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.tcp:
        server.start_tcp(args.host, args.port)
    elif args.ws:
        server.start_ws(args.host, args.port)
    else:
        protocol_out = ProtocolOutput(sys.stdout.buffer)
        sys.stdout = sys.stderr  # a stray print must not corrupt the protocol stream
        # stdin is a BufferedReader (typed BinaryIO); FramedInput offers pygls the two
        # methods it reads with, readline and read.
        framed = FramedInput(cast(io.BufferedReader, sys.stdin.buffer))
        server.start_io(cast(BinaryIO, framed), cast(BinaryIO, protocol_out))
        if framed.ended:
            leave(0)  # the client went away (or quit without shutdown): nothing to report
    # pygls swallows the SystemExit of `exit`; its status, as LSP defines it:
    leave(0 if server.protocol.shutdown_requested else 1)


def leave(status: int) -> NoReturn:
    """End the process once the client is done. Interpreter shutdown is skipped: the
    inference worker and pygls' stdin reader are threads that may still be inside torch or a
    blocking read, and finalizing under them crashed the process (SIGSEGV, or SIGABRT from
    a C++ thread) after a clean `exit`. Nothing is left to save; the logs are flushed."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)
