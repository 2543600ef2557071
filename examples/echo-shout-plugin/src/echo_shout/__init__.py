"""An example Echo provider plugin, installed as a package with an ``echo.providers`` entry point."""
