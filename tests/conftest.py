"""Cross-package suites: enable Edifice's contract-kit pytest plugin (signature marker, fixtures, options)."""

pytest_plugins = ["edifice.testing.pytest_plugin"]
