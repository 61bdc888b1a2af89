"""An example application on the toolkit: evaluations of agent executions."""
