"""Provider configuration as stored: the one write service, reads, the YAML import, and the checks of the configuration files."""
