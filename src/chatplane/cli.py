"""The `chatplane` command line."""

from __future__ import annotations

import typer

from chatplane.settings import Settings

cli = typer.Typer(no_args_is_help=True, add_completion=False, help="chatplane: self-hosted AI chat")


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="Bind address (CHATPLANE_HOST)"),
    port: int | None = typer.Option(None, help="Port (CHATPLANE_PORT)"),
) -> None:
    """Run the platform."""
    import uvicorn

    from chatplane.app import create_app

    settings = Settings()
    bind_host = host or settings.host
    bind_port = port if port is not None else settings.port
    typer.echo(f"chatplane listening on http://{bind_host}:{bind_port}")
    uvicorn.run(create_app(settings), host=bind_host, port=bind_port, log_level="warning")


@cli.command()
def version() -> None:
    """Print the version."""
    from chatplane import __version__

    typer.echo(__version__)


def main() -> None:
    cli()
