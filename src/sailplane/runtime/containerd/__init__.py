"""The containerd runtime, in its own namespace, with OCI runtime spec mounts."""
