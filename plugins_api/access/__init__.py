"""Who may call Echo: client API keys, their authentication for DRF, async views and websockets, and login throttling."""
