"""The drone: one per machine; turns spawns into containers and reports every step."""
