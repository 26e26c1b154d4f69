"""The `tracer` command: a thin group that loads each subcommand only when it is used.

Subcommands live in `tracer/commands/<name>.py` and each exposes a click command named
`command`. Loading lazily keeps `tracer --help` and `tracer analyze` fast (scapy and the
kubernetes client take a second to import and are only needed by some commands).
"""

from __future__ import annotations

import importlib
import importlib.util
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
    """Entry point: errors become one line plus a hint on stderr, never a traceback."""
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
    sys.exit(rv if isinstance(rv, int) else 0)
