"""The buzz consumer: scores texts and explicit signals for the alerts consumer."""
