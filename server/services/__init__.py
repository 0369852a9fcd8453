"""The gRPC services: thin adapters from the contract to the pipeline and store."""
