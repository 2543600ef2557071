"""What every API request shares at the edge: its paths, bounded JSON, chat body parsing, SSE, the error shape, usage timing."""
