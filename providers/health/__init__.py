"""Provider health: the monitor that checks every provider, and the state it reports."""
