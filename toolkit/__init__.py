"""SQL-first persistence and infrastructure toolkit for AI-agent platforms."""
