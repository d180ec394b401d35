"""`python -m flowsift`, and the `flowsift` command."""
from flowsift.errors import take_stops


def main():
    # Ctrl-C and SIGTERM are flowsift's before the command line is imported (typer takes a
    # while): one that comes meanwhile ends the command as it starts, in one line
    take_stops()
    from flowsift.cli import main as run
    run()


if __name__ == "__main__":
    main()
