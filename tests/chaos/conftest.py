"""The real engine and the backend image, as the integration tests have them."""

from tests.integration.conftest import backend_image, docker_client

__all__ = ["backend_image", "docker_client"]  # fixtures, imported for pytest
