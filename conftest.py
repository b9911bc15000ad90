"""Root conftest: enables Edifice's contract-kit pytest plugin for the whole workspace test run."""

pytest_plugins = ["edifice.testing.pytest_plugin"]
