"""Drop-in APIs: OpenAI's and Anthropic's wire formats, served in front of any provider."""
