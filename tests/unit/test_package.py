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


def test_old_doubles_path_still_imports_with_a_deprecation_warning():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    import keepstore.doubles as old\n"
            "import keepstore.testing.doubles as new\n"
            "assert old.VerifierTransport is new.VerifierTransport\n"
            "assert any(issubclass(w.category, DeprecationWarning) for w in seen), seen\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_keep_help_names_the_environment_the_config_file_and_the_default_store():
    out = subprocess.run([sys.executable, "-m", "keepstore", "--help"], capture_output=True, text=True, check=True)
    for needle in ("KEEP_SERVICES", "KEEP_TOKEN", "config.yml", "keepstore/blocks", "interrupted"):
        assert needle in out.stdout, needle


def test_metadata_has_an_author_and_project_urls():
    from importlib.metadata import metadata

    meta = metadata("keepstore")
    assert meta["Author"]
    assert meta.get_all("Project-URL")


def test_old_dataset_module_paths_still_import_with_a_deprecation_warning():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    import keepstore.collection as old, keepstore.readpath as old_tree\n"
            "import keepstore.datasets as new, keepstore.datasets.tree as tree, keepstore.manifest as manifest\n"
            "assert old is new and old_tree is tree and manifest is new.manifest\n"
            "assert old.DatasetReader is new.reader.DatasetReader\n"
            "assert sum(issubclass(w.category, DeprecationWarning) for w in seen) == 2, seen\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_md5_in_the_package_is_marked_not_for_security():
    # FIPS-mode hosts refuse hashlib.md5() unless it says usedforsecurity=False.
    import pathlib
    import re

    root = pathlib.Path(keepstore.__file__).parent
    calls = [(path.name, line) for path in root.rglob("*.py") for line in path.read_text().splitlines()
             if re.search(r"(?<!`)hashlib\.md5\(", line) and "usedforsecurity=False" not in line]
    assert calls == []
