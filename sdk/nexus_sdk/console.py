"""``nexus run|submit|wait|status|result|cancel``: the API from a terminal or a script.

::

    export NEXUS_URL=http://127.0.0.1:8080 NEXUS_TOKEN=…       # `nexus dev` prints both lines
    nexus run echo --params '{"x": 1}' --wait                 # the result document
    nexus submit echo --from runs.jsonl --tag batch-7          # bulk, chunked, resumable
    nexus wait echo --tag batch-7                              # a live progress bar
    nexus status echo <id>; nexus result echo <id>; nexus cancel echo <id>

Guarantees:

* what a script reads goes to stdout — a request id, a status document, a result
  document as stored — and everything for people (progress, errors) to stderr;
* the exit status says how it went: 0 done, 1 the run or batch did not complete (or the
  server refused), 2 bad usage, 3 a wait ran out of time, 130 interrupted;
* a failure of the server or the network is one line naming its kind
  (:mod:`nexus_sdk.errors`) and the server's message, never a traceback;
* ``--url``/``--token`` default to ``NEXUS_URL``/``NEXUS_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from nexus_sdk.errors import ApiError, NexusError, RunFailed, WaitTimeout
from nexus_sdk.syncclient import Client

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def json_argument(value: str) -> Any:
    """A JSON document given inline, or ``@path`` of a file holding one."""
    where = "the argument"
    if value.startswith("@"):
        where = value[1:]
        try:
            with open(where, "rb") as file:
                value = file.read().decode()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {where}: {exc.strerror}") from exc
    try:
        return json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{where} is not JSON: {exc}") from exc


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("NEXUS_URL"), help="default NEXUS_URL")
    common.add_argument(
        "--token", default=os.environ.get("NEXUS_TOKEN"), help="default NEXUS_TOKEN"
    )
    top = argparse.ArgumentParser(prog="nexus")
    commands = top.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[common], help="submit one run")
    run.add_argument("algorithm")
    run.add_argument(
        "--params", type=json_argument, required=True, help="algorithmParameters: JSON or @file"
    )
    run.add_argument("--tag")
    run.add_argument("--config", type=json_argument, help="customConfiguration: JSON or @file")
    run.add_argument("--wait", action="store_true", help="print the result document")
    run.add_argument("--timeout", type=float, help="seconds to wait (default: no limit)")

    submit = commands.add_parser("submit", parents=[common], help="submit a JSONL file")
    submit.add_argument("algorithm")
    submit.add_argument(
        "--from",
        dest="source",
        required=True,
        help="one run a line: its algorithmParameters, or a run body with algorithmParameters",
    )
    submit.add_argument("--tag", required=True)
    submit.add_argument("--chunk", type=int, default=500, help="runs a request (≤ 1000)")

    wait = commands.add_parser("wait", parents=[common], help="follow a tagged batch")
    wait.add_argument("algorithm")
    wait.add_argument("--tag", required=True)
    wait.add_argument("--timeout", type=float, help="seconds to wait (default: no limit)")

    for name, about in (
        ("status", "how a run stands"),
        ("result", "a run's result"),
        ("cancel", "cancel a run"),
    ):
        one = commands.add_parser(name, parents=[common], help=about)
        one.add_argument("algorithm")
        one.add_argument("request_id")
        if name == "result":
            one.add_argument("--wait", action="store_true", help="wait for the run to finish")
            one.add_argument("--timeout", type=float)
        if name == "cancel":
            one.add_argument("--reason", default="cancelled from the command line")
    return top


def say(message: str) -> None:
    print(f"nexus: {message}", file=sys.stderr, flush=True)


def write(data: bytes) -> None:
    sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
    sys.stdout.flush()


def print_json(document: Any) -> None:
    write(json.dumps(document, ensure_ascii=False).encode())


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if not args.url:
        say("no server: give --url or set NEXUS_URL (`nexus dev` prints the export lines)")
        return EXIT_USAGE
    try:
        with Client(args.url, args.token) as client:
            return COMMANDS[args.command](client, args)
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except WaitTimeout as exc:
        say(str(exc))
        return EXIT_TIMEOUT
    except RunFailed as exc:
        say(str(exc))
        return EXIT_INCOMPLETE
    except ApiError as exc:
        say(f"{type(exc).__name__} ({exc.status}): {exc.message}")
        return EXIT_INCOMPLETE
    except NexusError as exc:
        say(f"{type(exc).__name__}: {exc}")
        return EXIT_INCOMPLETE


def run(client: Client, args: argparse.Namespace) -> int:
    request_id = client.submit(args.algorithm, args.params, tag=args.tag, configuration=args.config)
    if not args.wait:
        write(request_id.encode())
        return EXIT_OK
    say(f"submitted {request_id}; waiting")
    return _print_result(client, args.algorithm, request_id, args.timeout)


def _print_result(client: Client, algorithm: str, request_id: str, timeout: float | None) -> int:
    state = client.wait(algorithm, request_id, timeout=timeout)
    if not state.completed:
        raise RunFailed(algorithm, state)
    write(client.fetch_result(state).content)
    return EXIT_OK


def status(client: Client, args: argparse.Namespace) -> int:
    state = client.status(args.algorithm, args.request_id)
    print_json(dict(state.raw))
    return EXIT_OK


def result(client: Client, args: argparse.Namespace) -> int:
    if args.wait:
        return _print_result(client, args.algorithm, args.request_id, args.timeout)
    state = client.status(args.algorithm, args.request_id)
    if not state.finished:
        say(f"run {state.request_id} is {state.status}: no result yet (--wait waits for it)")
        return EXIT_INCOMPLETE
    if not state.completed:
        raise RunFailed(args.algorithm, state)
    write(client.fetch_result(state).content)
    return EXIT_OK


def cancel(client: Client, args: argparse.Namespace) -> int:
    client.cancel(args.algorithm, args.request_id, reason=args.reason, initiator="nexus-cli")
    say(f"cancelled {args.request_id}")
    return EXIT_OK


def submit(client: Client, args: argparse.Namespace) -> int:
    from nexus_sdk.batches import submit_file

    return submit_file(client, args.algorithm, args.tag, args.source, args.chunk)


def wait(client: Client, args: argparse.Namespace) -> int:
    from nexus_sdk.batches import follow

    return follow(client, args.algorithm, args.tag, args.timeout)


COMMANDS = {
    "run": run,
    "submit": submit,
    "wait": wait,
    "status": status,
    "result": result,
    "cancel": cancel,
}
