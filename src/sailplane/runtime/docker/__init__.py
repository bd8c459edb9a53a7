"""The Docker Engine runtime. The ``docker`` SDK is imported only under this package."""
