"""Serving scenarios under MLPerf LoadGen: the system under test, the scenarios, and a serving cell's figures."""
