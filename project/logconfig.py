"""Production's LOGGING_CONFIG: the stdlib's dictConfig, plus Python's warnings through logging.

Python writes a warning (a deprecation, whitenoise's "No directory at: …/staticfiles/") straight to
stderr as text, which breaks production's one-JSON-object-per-line stream for whatever ships it;
captured, it is a WARNING line of logger `py.warnings`, JSON and with its request id like any other.
"""

import logging
import logging.config


def configure(config: dict) -> None:
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
