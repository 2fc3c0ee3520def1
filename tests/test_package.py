"""The package's public surface."""

import subprocess
import sys

import keepstore


def test_all_is_sorted_and_every_name_resolves():
    assert keepstore.__all__ == sorted(keepstore.__all__)
    for name in keepstore.__all__:
        assert getattr(keepstore, name) is not None, name


def test_import_configures_no_logging_handlers_beyond_nullhandler():
    import logging

    handlers = logging.getLogger("keepstore").handlers
    assert all(isinstance(h, logging.NullHandler) for h in handlers)


def test_python_m_keepstore_prints_version():
    out = subprocess.run([sys.executable, "-m", "keepstore", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"keepstore {keepstore.__version__}"
