"""Parameter recovery internals; the public face is `jode.fit`."""
