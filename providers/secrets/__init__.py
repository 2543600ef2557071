"""Provider secrets: encrypted at rest, masked when shown, collected once for redaction, kept out of every log line."""
