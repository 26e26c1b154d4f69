"""The `tracer` command: a thin group that loads each subcommand only when it is used.

Subcommands live in `tracer/commands/<name>.py` and each exposes a click command named
`command`. Loading lazily keeps `tracer --help` and `tracer analyze` fast (scapy and the
kubernetes client take a second to import and are only needed by some commands).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from tracer import __version__
from tracer.errors import ExitCode, TracerError

# name -> (module, one-line help shown in `tracer --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("tracer.commands.analyze", "Follow each packet across saved captures (pcap/pcapng)."),
    "lab": ("tracer.commands.lab", "A two-node Calico VXLAN cluster in network namespaces."),
    "path": ("tracer.commands.path", "Print the expected way of a request between two pods."),
    "follow": ("tracer.commands.follow", "Capture on every hop while a request flies, then show its way."),
    "watch": ("tracer.commands.watch", "Send a request every second and light up each hop live."),
    "agents": ("tracer.commands.agents", "Warm capture agents on every node (install, uninstall, status)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, _ = COMMANDS[name]
        if importlib.util.find_spec(module_name) is None:
            return None
        return importlib.import_module(module_name).command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracer")
def cli() -> None:
    """tracer shows the way of a packet through a Kubernetes cluster network.

    \b
    Start with the local lab (needs root):
      tracer lab up                 # two nodes, Calico VXLAN, pods curl and httpbin
      tracer path curl httpbin      # the expected way, hop by hop
      tracer follow curl httpbin    # capture on every hop while curl runs
      tracer analyze DIR            # the same view from saved captures
      tracer lab down
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: errors become one line plus a hint on stderr, never a traceback.

    Run as the program (argv None), it ends the process at once when done (`_exit_now`)."""
    try:
        _main(argv)
    except SystemExit as e:
        if argv is not None:
            raise
        _exit_now(e.code)


def _exit_now(code: object) -> None:
    """Leave without the interpreter's teardown: freeing every object of every module (rich,
    click, the correlator) takes ~40 ms, longer than some commands' own work. atexit functions
    still run and the output is flushed; with threads still running, the normal way."""
    import atexit
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed to stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _main(argv: list[str] | None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="tracer", standalone_mode=False)
    except TracerError as e:
        err = sys.stderr
        click.secho(f"tracer: {e.message}", fg="red", file=err)
        if e.hint:
            click.echo(f"  hint: {e.hint}", file=err)
        sys.exit(int(e.exit_code))
    except click.exceptions.Abort:
        click.echo("tracer: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except KeyboardInterrupt:
        click.echo("tracer: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:
        if not _interrupted(e):
            raise
        click.echo("tracer: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    sys.exit(rv if isinstance(rv, int) else 0)


def _interrupted(e: BaseException) -> bool:
    """Whether Ctrl-C is what ended the run, wrapped in another exception: Python 3.11 turns a
    KeyboardInterrupt raised while a class is being created (a module importing) into
    `RuntimeError: Error calling __set_name__ ...`, its cause the interrupt."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
