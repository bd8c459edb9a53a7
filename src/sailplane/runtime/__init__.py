"""Container runtimes behind one interface; each translates resolved mounts itself."""
