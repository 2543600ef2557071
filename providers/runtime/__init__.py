"""The provider runtime of this process: the registry of live providers, routing, retries, breakers, and keeping them equal to the database."""
