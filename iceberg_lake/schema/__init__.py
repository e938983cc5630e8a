"""Schema evolution: versioned migrations, safe evolve operations, drift vs. declarations."""
