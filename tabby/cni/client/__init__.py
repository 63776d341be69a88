"""The exec'd CNI client (C) that forwards an invocation to the node agent's CNI server."""
