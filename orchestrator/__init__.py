"""The population: Ray driver, proposers, git archive, ledger, selection, CLI and reports.

Data flows one way: orchestrator -> trainer -> judge."""
