"""The API admins use: the guide's ``/plugins/`` management API, the ``/api/`` REST resources, OpenAPI and ``/metrics``."""
