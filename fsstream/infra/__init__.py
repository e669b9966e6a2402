"""What the workers run on: Kafka clients, the object store, the definitions follower,
the ``/health`` and ``/metrics`` server, process set-up and crash points for tests."""
