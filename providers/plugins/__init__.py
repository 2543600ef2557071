"""Built-in provider plugins, by plugin name (dotted paths, imported at start-up)."""

BUILTIN_PLUGINS: dict[str, str] = {
    "echo": "providers.plugins.echo_provider.EchoProvider",
    "openai": "providers.plugins.openai_provider.OpenAIProvider",
    "anthropic": "providers.plugins.anthropic_provider.AnthropicProvider",
    "ollama": "providers.plugins.ollama_provider.OllamaProvider",
}
