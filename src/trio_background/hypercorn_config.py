"""A Hypercorn config for plain ``hypercorn``: the trio worker, and our log lines shown.

Hypercorn sets up only its own loggers, so the INFO lines of the
``trio_background`` logger (the line when a worker's shutdown begins, and the
shutdown report when every task completed) go nowhere under plain
``hypercorn``. Load this module as Hypercorn's config::

    hypercorn --config python:trio_background.hypercorn_config MODULE:APP

It selects the trio worker and sends the ``trio_background`` logger's lines
(INFO and up) to stderr in Hypercorn's own format; Hypercorn's options on the
command line still apply. ``python -m trio_background`` needs none of this.
"""

__all__ = ["logconfig_dict", "worker_class"]

worker_class = "trio"

# Applied by Hypercorn after it made its own loggers: they are left as they are.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "hypercorn": {
            "format": "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
            "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
        }
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "hypercorn",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {"trio_background": {"level": "INFO", "handlers": ["stderr"], "propagate": False}},
}
