"""Figure and table scripts that read results/ only."""
