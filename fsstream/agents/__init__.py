"""faust agents: thin loops that decode, call the core and publish."""
