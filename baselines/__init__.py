"""Other domain-adaptation methods behind the same adapt() interface as NADA."""
