"""HTTP routes, one module per resource; each module exposes `router`."""
