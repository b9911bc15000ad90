"""Entry point of edifice-broken: fails on import, on purpose (plugin failure isolation tests)."""

MESSAGE = "edifice-broken fails on import on purpose (plugin failure isolation test)"

raise RuntimeError(MESSAGE)
