"""Writing a new provider plugin: the generator behind ``manage.py startprovider`` and its templates."""
