"""The guide's ``/chat`` endpoint and the browser chat: its page, websocket consumer, protocol and conversations."""
