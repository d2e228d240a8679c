import click
from semtile import __version__

@click.group()
@click.version_option(__version__, prog_name="semtile")
def main():
    """semtile."""
