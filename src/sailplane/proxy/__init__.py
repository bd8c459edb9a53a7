"""The proxy: routes ``/{token}/...`` (HTTP and WebSocket) to the token's backend."""
