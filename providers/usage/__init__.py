"""What requests use: the usage recorder, the Prometheus metrics and their bounded labels, model prices."""
