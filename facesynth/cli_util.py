"""What the three CLIs share: the ``--config`` option, config loading, and turning user mistakes into
one-line errors with a non-zero exit (never a traceback)."""
from __future__ import annotations

import functools
import sys

import click

from .config import ConfigError, load_config

config_option = click.option(
    "--config", "config", type=click.Path(dir_okay=False), default=None,
    help="YAML merged over pipeline.yaml (name only the keys you change)")


def load_cfg(path, overrides: dict):
    """Load the config; every non-None override replaces the pipeline.yaml value."""
    return load_config(path, overrides)


@functools.lru_cache(maxsize=1)
def _help_config():
    try:
        return load_config()
    except ConfigError:  # --help must still render with a broken pipeline.yaml
        return None


def yaml_default(attr: str) -> str:
    """`` [pipeline.yaml: VALUE]`` for option help texts (``attr`` like ``"datagen.n"``)."""
    obj = _help_config()
    if obj is None:
        return ""
    for part in attr.split("."):
        obj = getattr(obj, part)
    return f" [pipeline.yaml: {obj}]"


#: Exceptions that mean the user asked for something wrong, not that the code is broken.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError)


def _loaded(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """The error types named ``"module:Class"`` whose modules are loaded (one that was never imported cannot
    have raised anything)."""
    found = []
    for name in names:
        module, cls = name.split(":")
        if module in sys.modules:
            found.append(getattr(sys.modules[module], cls))
    return tuple(found)


def user_errors(*extra: type[BaseException] | str):
    """Decorator for a click command: :data:`USER_ERRORS` and the stage's own ``extra`` error types become
    ``Error: <one line>`` with exit code 1; Ctrl-C exits 130 with a note that the command resumes.

    An ``extra`` type may be named ``"module:Class"``: the CLI module then need not import that stage (and
    what it imports, e.g. scipy) to start; the name is looked up when an error is caught."""
    types_ = USER_ERRORS + tuple(t for t in extra if not isinstance(t, str))
    names = tuple(t for t in extra if isinstance(t, str))

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:
                click.echo("interrupted: run the same command again to resume", err=True)
                raise SystemExit(130) from None
            except Exception as e:
                if not isinstance(e, types_ + _loaded(names)):
                    raise
                text = str(e).strip()
                raise click.ClickException(text.splitlines()[0] if text else type(e).__name__) from None

        return wrapper

    return deco
