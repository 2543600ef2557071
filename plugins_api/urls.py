"""URLs of Echo's HTTP API."""

urlpatterns: list = []
