"""The optimizer update-rule task: ``update(param, grad, state, lr, step) -> new param``."""
